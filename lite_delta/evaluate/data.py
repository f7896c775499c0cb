"""Benchmark rows (lite_delta/eval_rows.py: the Hub, or a local folder given as ``--data-dir``), exemplars, subsets.

A local folder has one subfolder per task in the layout of lite-delta's benchdata copies
(``gsm8k/test.jsonl``, ``bbh/test/<task>.jsonl``, ``math500/fewshot_minerva.jsonl``, ...). An item's
``id`` is its row index in the evaluation split as loaded (BBH: its 27 task files in name order).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from lite_delta.errors import LiteDeltaError
from lite_delta.eval_rows import (  # noqa: F401 (the rows themselves live below the stages: the meter reads them too)
    BBH_TASKS,
    SPLITS,
    Split,
    load_hub,
    load_rows,
    local_file,
    read_jsonl,
    rows_digest,
)

# OLMES's fixed 15-shot PopQA exemplars are these rows (by `id`) of akariasai/PopQA's test split.
POPQA_SHOT_IDS = (5985932, 724502, 2285098, 2007997, 3785558, 4202904, 6081578, 2180840, 6036329, 867482,
                  1378543, 5801967, 4339770, 6418858, 2238655)


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
