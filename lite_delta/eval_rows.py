"""The suite's benchmark rows: from the Hub with `datasets`, or the same columns from a local folder.

A local folder has one subfolder per task in the layout of lite-delta's benchdata copies
(``gsm8k/test.jsonl``, ``bbh/test/<task>.jsonl``, ...). An item's ``id`` is its row index in the
evaluation split as loaded (BBH: its 27 task files in name order). Below the stages: evaluate scores
these rows, and the meter keeps its own items clear of them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lite_delta.errors import LiteDeltaError
from lite_delta.files import parse_json

DATA_DIR_HINT = "pass --data-dir DIR with local copies (DIR/<task>/..., the layout of lite-delta's benchdata)"


@dataclass(frozen=True)
class Split:
    hub_id: str
    config: str | None
    split: str
    local: str  # path under DIR/<task>/


SPLITS = {
    "gsm8k": Split("openai/gsm8k", "main", "test", "gsm8k/test.jsonl"),
    "math500": Split("HuggingFaceH4/MATH-500", None, "test", "math500/test.jsonl"),
    "mmlu": Split("cais/mmlu", "all", "test", "mmlu/test.jsonl"),
    "ifeval": Split("google/IFEval", None, "train", "ifeval/train.jsonl"),
    "bbh": Split("SaylorTwift/bbh", None, "test", "bbh/test"),  # parquet mirror of lukaemon/bbh (no script)
    "truthfulqa": Split("truthfulqa/truthful_qa", "multiple_choice", "validation", "truthfulqa/validation.jsonl"),
    "humaneval": Split("openai/openai_humaneval", None, "test", "humaneval/test.jsonl"),
    "drop": Split("EleutherAI/drop", None, "validation", "drop/validation.jsonl"),
    "popqa": Split("akariasai/PopQA", None, "test", "popqa/test.jsonl"),
}

BBH_TASKS = (
    "boolean_expressions causal_judgement date_understanding disambiguation_qa dyck_languages formal_fallacies "
    "geometric_shapes hyperbaton logical_deduction_five_objects logical_deduction_seven_objects "
    "logical_deduction_three_objects movie_recommendation multistep_arithmetic_two navigate object_counting "
    "penguins_in_a_table reasoning_about_colored_objects ruin_names salient_translation_error_detection snarks "
    "sports_understanding temporal_sequences tracking_shuffled_objects_five_objects "
    "tracking_shuffled_objects_seven_objects tracking_shuffled_objects_three_objects web_of_lies word_sorting"
).split()

def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is named by parse_json, not raised mid-loop
        for n, line in enumerate(f, 1):
            if line.strip():
                rows.append(parse_json(line, f"{path}: line {n}"))
    return rows


def load_hub(hub_id: str, config: str | None, split: str, hint: str = DATA_DIR_HINT) -> list[dict]:
    import datasets

    try:
        try:
            ds = datasets.load_dataset(hub_id, config, split=split)
        except Exception as exc:
            if "script" not in str(exc).lower():
                raise
            # a script-based dataset (refused by datasets>=4): the Hub's own parquet conversion
            ds = datasets.load_dataset(hub_id, config, split=split, revision="refs/convert/parquet")
    except Exception as exc:  # offline, missing, or a script-based dataset without a parquet conversion
        raise LiteDeltaError(
            f"could not load {hub_id}{'/' + config if config else ''} ({split}) from the Hub: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; without internet, {hint}"
        ) from None
    return [dict(row) for row in ds]


def local_file(data_dir: Path, relative: str, task: str) -> Path:
    path = Path(data_dir) / relative
    if not path.exists():
        raise LiteDeltaError(f"{task}: {path} not found in --data-dir {data_dir}")
    return path


def load_rows(task: str, data_dir: Path | None, hint: str = DATA_DIR_HINT) -> tuple[list[dict], str]:
    """The evaluation split of ``task`` as a list of rows, and where it came from."""
    s = SPLITS[task]
    if data_dir is None:
        if task == "bbh":
            rows = []
            for name in BBH_TASKS:
                rows += [{**r, "task": name} for r in load_hub(s.hub_id, name, s.split, hint)]
        else:
            rows = load_hub(s.hub_id, s.config, s.split, hint)
        return rows, f"hub:{s.hub_id}" + (f"/{s.config}" if s.config else "") + f":{s.split}"
    if task == "bbh":
        folder = local_file(data_dir, s.local, task)
        rows = []
        for path in sorted(folder.glob("*.jsonl")):
            rows += [{**r, "task": path.stem} for r in read_jsonl(path)]
        return rows, f"dir:{folder}"
    if task == "popqa" and not (Path(data_dir) / s.local).exists():
        # Only OLMES's exemplar rows are available offline: a format test, scored leave-one-out.
        path = local_file(data_dir, "popqa/fewshot_olmes.jsonl", task)
        return read_jsonl(path), f"dir:{path} (exemplar rows only: format test, not a measurement)"
    path = local_file(data_dir, s.local, task)
    return read_jsonl(path), f"dir:{path}"


def rows_digest(rows: list[dict]) -> str:
    blob = json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
