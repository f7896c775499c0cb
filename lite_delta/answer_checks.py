"""Verifiable answer checks shared by the stages that score answers (evaluate, meter).

GSM8K: the last number of an answer against the gold after "####". IFEval: lm-eval's maintained copy of
Google's instruction checkers (`lm_eval.tasks.ifeval`), run deterministically per row. Moved here from
evaluate/scorers.py (which re-exports them) so that no stage imports another.
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


def ifeval_description(instruction_id: str, kwargs: dict) -> str:
    """The instruction text lm-eval's checker writes for these arguments (how IFEval's prompts phrase it)."""
    registry = _ifeval_utils().instructions_registry
    if instruction_id not in registry.INSTRUCTION_DICT:
        raise LiteDeltaError(f"unknown IFEval instruction {instruction_id!r}")
    with seeded_random(0):  # a checker given every argument draws nothing; seeded in case one does
        return registry.INSTRUCTION_DICT[instruction_id](instruction_id).build_description(**kwargs)
