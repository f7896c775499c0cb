"""The meter's verifiable items, kept apart from every item the evaluation suite scores.

- gsm8k: grade-school math from GSM8K's *train* split (the suite scores its test split), graded by the
  last number of the answer against the gold after "####", as the suite grades GSM8K.
- ifeval: writing tasks written for this project, each with instructions phrased and checked by lm-eval's
  IFEval checkers (never IFEval's own prompts: google/IFEval is the evaluation set), graded prompt-level loose.
- scorer: the recipe's own prompts, graded by the pairing scorer (by_score recipes rank answers by it).

Every item is compared with the suite's GSM8K and IFEval items (the only suite tasks of these kinds);
one that matches (case and spacing aside) is dropped and counted, never scored.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lite_delta.answer_checks import gsm8k_gold, ifeval_description, ifeval_follow, last_number, numbers_equal
from lite_delta.errors import LiteDeltaError
from lite_delta.eval_rows import load_hub, load_rows, read_jsonl

GSM8K_TRAIN = ("openai/gsm8k", "main", "train")
GSM8K_LOCAL = "gsm8k/train.jsonl"
GSM8K_INSTRUCTION = "Solve the problem step by step, then give the final answer as a number on the last line."
EVAL_TEXT_FIELDS = {"gsm8k": "question", "ifeval": "prompt"}  # the suite's items the meter's items must avoid


@dataclass
class Item:
    task: str
    item_id: str
    messages: list[dict]
    grade: Callable[[str], float] = field(repr=False)


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


# --- gsm8k --------------------------------------------------------------------------------------


def gsm8k_train_rows(data_dir: Path | None) -> tuple[list[dict], str]:
    """GSM8K's train split: DATA_DIR/gsm8k/train.jsonl (or DATA_DIR itself, a .jsonl file), else the Hub."""
    if data_dir is not None:
        path = Path(data_dir)
        path = path if path.is_file() else path / GSM8K_LOCAL
        if not path.is_file():
            raise LiteDeltaError(f"meter task gsm8k: {path} not found; give meter.data_dir (--data-dir) a folder with "
                                 f"{GSM8K_LOCAL} or a .jsonl file of GSM8K's train split (question, answer)")
        rows = read_jsonl(path)
        source = f"file:{path}"
    else:
        hint = (f"point meter.data_dir (--data-dir) at a folder with {GSM8K_LOCAL} or at a .jsonl file of GSM8K's "
                "train split (question, answer), or leave gsm8k out of meter.tasks (--tasks)")
        try:
            rows = load_hub(*GSM8K_TRAIN, hint=hint)
        except LiteDeltaError as exc:
            raise LiteDeltaError(f"meter task gsm8k: {exc}") from None
        source = "hub:openai/gsm8k/main:train"
    bad = next((i for i, r in enumerate(rows) if not isinstance(r.get("question"), str) or "####" not in
                str(r.get("answer", ""))), None)
    if bad is not None:
        raise LiteDeltaError(f"meter task gsm8k: row {bad + 1} of {source} is not in GSM8K's schema "
                             "(a `question` and an `answer` ending in `#### NUMBER`)")
    return rows, source


def gsm8k_items(rows: list[dict]) -> list[Item]:
    items = []
    for i, row in enumerate(rows):
        gold = gsm8k_gold(row["answer"])
        messages = [{"role": "user", "content": f"{row['question']}\n\n{GSM8K_INSTRUCTION}"}]
        items.append(Item("gsm8k", f"gsm8k-train-{i}", messages,
                          lambda text, gold=gold: float(numbers_equal(last_number(text), gold))))
    return items


# --- ifeval-style -------------------------------------------------------------------------------

WRITING_TASKS = (
    "Write a short note to a neighbour asking them to water your plants while you are away.",
    "Describe how to make a simple vegetable soup at home.",
    "Explain to a ten-year-old why the sky looks blue during the day.",
    "Write a product description for a reusable water bottle made of steel.",
    "Give advice to someone starting their first job in an office.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Summarize the benefits of taking a short walk after lunch.",
    "Write a thank-you message to a teacher at the end of the school year.",
    "Describe a busy train station in the early morning.",
    "Explain how a bicycle gear system helps a rider climb hills.",
    "Write a review of an imaginary cafe that serves only breakfast.",
    "Give tips for keeping a small balcony garden healthy in summer.",
    "Write a welcome message for new members of a community chess club.",
    "Explain the difference between weather and climate.",
    "Describe the steps to plan a weekend camping trip with friends.",
    "Write a letter to a city council asking for more bicycle lanes.",
    "Explain why regular backups of a computer are a good idea.",
    "Write a short speech for the opening of a small public library.",
    "Describe what makes a good board game for a family evening.",
    "Give advice on preparing for a job interview over video call.",
    "Write an invitation to a neighbourhood clean-up day in the park.",
    "Explain how bees help farmers grow fruit.",
    "Describe a quiet beach town during the off-season.",
    "Write a short guide to brewing a good cup of tea.",
)

# (instruction ids, kwargs per id): every checker here is deterministic and needs no NLTK data.
INSTRUCTION_SETS = (
    (("punctuation:no_comma",), ({},)),
    (("length_constraints:number_words",), ({"num_words": 80, "relation": "less than"},)),
    (("detectable_format:number_bullet_lists",), ({"num_bullets": 3},)),
    (("change_case:english_lowercase",), ({},)),
    (("change_case:english_capital",), ({},)),
    (("detectable_format:title",), ({},)),
    (("startend:end_checker",), ({"end_phrase": "That is all for now."},)),
    (("keywords:existence",), ({"keywords": ["morning", "simple"]},)),
    (("detectable_content:postscript",), ({"postscript_marker": "P.S."},)),
    (("length_constraints:number_paragraphs",), ({"num_paragraphs": 2},)),
    (("startend:quotation",), ({},)),
    (("detectable_format:number_highlighted_sections",), ({"num_highlights": 2},)),
    (("keywords:forbidden_words", "length_constraints:number_words"),
     ({"forbidden_words": ["very", "really"]}, {"num_words": 60, "relation": "at least"})),
)


def ifeval_rows() -> list[dict]:
    """Every (writing task, instruction set) combination as an IFEval-schema row of this project."""
    rows = []
    for t, task in enumerate(WRITING_TASKS):
        for s, (ids, kwargs) in enumerate(INSTRUCTION_SETS):
            text = " ".join(ifeval_description(i, k) for i, k in zip(ids, kwargs))
            rows.append({"key": f"meter-{t}-{s}", "prompt": f"{task} {text}", "instruction_id_list": list(ids),
                         "kwargs": [dict(k) for k in kwargs]})
    return rows


def ifeval_items(rows: list[dict]) -> list[Item]:
    return [Item("ifeval", row["key"], [{"role": "user", "content": row["prompt"]}],
                 lambda text, row=row: float(ifeval_follow(row, text)["prompt_loose"])) for row in rows]


# --- the recipe's scorer ------------------------------------------------------------------------


def scorer_items(prompts, scorer: Callable[[str], float]) -> list[Item]:
    return [Item("scorer", p.prompt_id, list(p.messages), scorer) for p in prompts]


# --- sampling and disjointness ------------------------------------------------------------------


def sample(items: list, limit: int, seed: int) -> list:
    """``limit`` items, a seeded sample kept in source order."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]


def eval_texts(eval_data_dir: Path | None) -> tuple[set[str], dict[str, str]]:
    """The normalized prompts of the suite's GSM8K and IFEval items, and where each set came from."""
    texts, sources = set(), {}
    for task, column in EVAL_TEXT_FIELDS.items():
        hint = ("point meter.eval_data_dir (--eval-data-dir) at the suite's local copies (DIR/gsm8k/test.jsonl, "
                "DIR/ifeval/train.jsonl)")
        try:
            rows, source = load_rows(task, eval_data_dir, hint)
        except LiteDeltaError as exc:
            raise LiteDeltaError(f"meter: the items cannot be checked against the evaluation suite's {task} items: "
                                 f"{exc}") from None
        texts |= {normalized(r[column]) for r in rows}
        sources[task] = source
    return texts, sources


def item_text(item: Item) -> str:
    """What is compared with the suite's items: the user's question, without the meter's own instruction."""
    text = next(m["content"] for m in reversed(item.messages) if m["role"] == "user")
    return text.removesuffix(f"\n\n{GSM8K_INSTRUCTION}")


def drop_evaluation_items(items: list[Item], texts: set[str]) -> tuple[list[Item], int]:
    kept = [it for it in items if normalized(item_text(it)) not in texts]
    return kept, len(items) - len(kept)
