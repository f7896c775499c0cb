"""Benchmark rows: from the Hub with `datasets`, or the same columns from a local folder (``--data-dir``).

A local folder has one subfolder per task in the layout of lite-delta's benchdata copies
(``gsm8k/test.jsonl``, ``bbh/test/<task>.jsonl``, ``math500/fewshot_minerva.jsonl``, ...). An item's
``id`` is its row index in the evaluation split as loaded (BBH: its 27 task files in name order).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from lite_delta.errors import LiteDeltaError


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

# OLMES's fixed 15-shot PopQA exemplars are these rows (by `id`) of akariasai/PopQA's test split.
POPQA_SHOT_IDS = (5985932, 724502, 2285098, 2007997, 3785558, 4202904, 6081578, 2180840, 6036329, 867482,
                  1378543, 5801967, 4339770, 6418858, 2238655)


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise LiteDeltaError(f"{path}: line {n} is not JSON ({exc})") from None
    return rows


def load_hub(hub_id: str, config: str | None, split: str) -> list[dict]:
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
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; without internet, pass "
            "--data-dir DIR with local copies (DIR/<task>/..., the layout of lite-delta's benchdata)"
        ) from None
    return [dict(row) for row in ds]


def local_file(data_dir: Path, relative: str, task: str) -> Path:
    path = Path(data_dir) / relative
    if not path.exists():
        raise LiteDeltaError(f"{task}: {path} not found in --data-dir {data_dir}")
    return path


def load_rows(task: str, data_dir: Path | None) -> tuple[list[dict], str]:
    """The evaluation split of ``task`` as a list of rows, and where it came from."""
    s = SPLITS[task]
    if data_dir is None:
        if task == "bbh":
            rows = []
            for name in BBH_TASKS:
                rows += [{**r, "task": name} for r in load_hub(s.hub_id, name, s.split)]
        else:
            rows = load_hub(s.hub_id, s.config, s.split)
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


# --- few-shot exemplars -------------------------------------------------------------------------


def _lm_eval_yaml(relative: str) -> dict:
    """A task YAML shipped inside lm-eval (its `!function` tags left unresolved)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((_lm_eval_tasks_root() / relative).read_text(encoding="utf-8"), Loader=Loader)


def _lm_eval_tasks_root() -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("lm_eval.tasks").submodule_search_locations[0])


def fewshot(task: str, data_dir: Path | None, rows: list[dict] | None = None) -> tuple[list[dict], str]:
    """The fixed exemplars of ``task`` and their source: the data folder's file, else a maintained copy."""
    d = Path(data_dir) if data_dir is not None else None
    if task == "gsm8k":
        if d is not None and (d / "gsm8k/fewshot_olmes.jsonl").exists():
            return read_jsonl(d / "gsm8k/fewshot_olmes.jsonl"), "OLMES STD:GSM8k (data dir)"
        samples = _lm_eval_yaml("gsm8k/gsm8k-cot.yaml")["fewshot_config"]["samples"]
        return [{"question": s["question"], "answer": s["target"]} for s in samples], "lm-eval gsm8k-cot.yaml"
    if task == "math500":
        if d is not None and (d / "math500/fewshot_minerva.jsonl").exists():
            return read_jsonl(d / "math500/fewshot_minerva.jsonl"), "Minerva:MATH (data dir)"
        return [{"problem": s["problem"], "solution": s["solution"]} for s in _minerva_samples()], (
            "lm-eval minerva_math list_fewshot_samples"
        )
    if task == "bbh":
        if d is not None and (d / "bbh/fewshot_olmes.jsonl").exists():
            shots = read_jsonl(d / "bbh/fewshot_olmes.jsonl")
            for s in shots:
                s["description"] = _bbh_description(d / "bbh/cot-prompts" / f"{s['task']}.txt")
            return shots, "OLMES STD:bbh_* + BBH cot-prompts (data dir)"
        shots = []
        for name in BBH_TASKS:
            spec = _lm_eval_yaml(f"bbh/cot_fewshot/{name}.yaml")
            for s in spec["fewshot_config"]["samples"]:
                shots.append({"task": name, "input": s["input"], "target": s["target"],
                              "description": spec["description"].strip()})
        return shots, "lm-eval bbh/cot_fewshot"
    if task == "truthfulqa":
        if d is not None and (d / "truthfulqa/fewshot_olmes.jsonl").exists():
            shots = read_jsonl(d / "truthfulqa/fewshot_olmes.jsonl")
            return [{"question": s["question"], "answer": s["choices"][0]} for s in shots], (
                "OLMES Original:TruthfulQA (data dir)"
            )
        text = _lm_eval_yaml("truthfulqa/truthfulqa_mc1.yaml")["doc_to_text"]
        pairs = re.findall(r"Q: (.*?)\nA: (.*?)(?:\n|')", text.split("%}")[0])
        return [{"question": q.strip(), "answer": a.strip()} for q, a in pairs], "lm-eval truthfulqa_mc1 primer"
    if task == "popqa":
        if d is not None and (d / "popqa/fewshot_olmes.jsonl").exists():
            return read_jsonl(d / "popqa/fewshot_olmes.jsonl")[:15], "OLMES popqa (data dir)"
        by_id = {r["id"]: r for r in rows or []}
        missing = [i for i in POPQA_SHOT_IDS if i not in by_id]
        if missing:
            raise LiteDeltaError(f"popqa: few-shot rows {missing} are not in the loaded split")
        return [by_id[i] for i in POPQA_SHOT_IDS], "OLMES popqa (rows of the test split)"
    if task == "drop":
        if d is not None and (d / "drop/train.jsonl").exists():
            train = read_jsonl(d / "drop/train.jsonl")
            source = "3 train rows, seed 1234 (data dir)"
        elif d is None:
            train = load_hub(SPLITS["drop"].hub_id, None, "train")
            source = "3 train rows, seed 1234"
        else:
            return [], "none: no drop/train.jsonl in the data dir; shots are other questions of the same split"
        return random.Random(1234).sample(train, 3), source
    return [], "none"


def _minerva_samples() -> list[dict]:
    # Read as a literal, not imported: lm-eval's minerva_math/utils.py asserts antlr4 4.11 on import.
    import ast

    path = _lm_eval_tasks_root() / "minerva_math/utils.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == "list_fewshot_samples":
            return ast.literal_eval(node.body[-1].value)
    raise LiteDeltaError(f"no list_fewshot_samples() in {path}: pass --data-dir with math500/fewshot_minerva.jsonl")


def _bbh_description(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    body = text.split("-----\n", 1)[-1]
    return body.split("\n\nQ:", 1)[0].strip()


# --- reduced subsets ----------------------------------------------------------------------------


def select_ids(strata: list[str | None], limit: int | None, method: str, seed: int) -> list[int]:
    """Item ids of a reduced subset: the first ``limit``, or a seeded sample stratified by subject/config.

    The stratified sample gives each stratum its share of ``limit`` (largest remainder; ties,
    e.g. fewer items than strata, broken by the seed), picks within a stratum with ``random.Random(seed)``, and returns ids in order.
    """
    n = len(strata)
    if limit is None or limit >= n:
        return list(range(n))
    if method == "first" or all(s is None for s in strata):
        return list(range(limit))
    if method != "stratified":
        raise LiteDeltaError(f"unknown subset method {method!r} (first | stratified)")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        groups.setdefault(str(s), []).append(i)
    names = sorted(groups)
    quota = {g: limit * len(groups[g]) / n for g in names}
    take = {g: int(quota[g]) for g in names}
    left = limit - sum(take.values())
    rng = random.Random(seed)
    tie = {g: rng.random() for g in names}  # equal remainders (limit < strata): a seeded choice, not A-Z
    for g in sorted(names, key=lambda g: (-round(quota[g] - take[g], 9), tie[g]))[:left]:
        take[g] += 1
    chosen: list[int] = []
    for g in names:
        chosen += rng.sample(groups[g], take[g])
    return sorted(chosen)
