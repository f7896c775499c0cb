"""Benchmark rows from a local folder (benchdata layout) or the Hub; exemplars; reduced subsets."""

from __future__ import annotations

import pytest
from conftest import BENCHDATA, BENCHDATA_SKIP

from lite_delta.errors import LiteDeltaError
from lite_delta.evaluate import data
from lite_delta.evaluate.tasks import TASKS

pytestmark = pytest.mark.skipif(not BENCHDATA.is_dir(), reason=BENCHDATA_SKIP)

SIZES = {"gsm8k": 1319, "math500": 500, "mmlu": 1140, "ifeval": 541, "bbh": 6511, "truthfulqa": 817,
         "humaneval": 164, "drop": 19, "popqa": 16}
SHOTS = {"gsm8k": 8, "math500": 4, "bbh": 81, "truthfulqa": 6, "popqa": 15}


@pytest.mark.parametrize("task", TASKS)
def test_every_task_loads_from_the_data_dir_with_its_exemplars(task):
    rows, source = data.load_rows(task, BENCHDATA)
    assert len(rows) == SIZES[task] and source.startswith("dir:")
    shots, shots_source = data.fewshot(task, BENCHDATA, rows)
    assert len(shots) == SHOTS.get(task, 0), shots_source
    if task == "bbh":
        assert {r["task"] for r in rows} == set(data.BBH_TASKS)
        assert all(s["description"] and "canary" not in s["description"] for s in shots)


@pytest.mark.parametrize("task,n", [("gsm8k", 8), ("math500", 4), ("bbh", 81), ("truthfulqa", 6)])
def test_without_a_data_dir_exemplars_come_from_lm_evals_task_files(task, n):
    shots, source = data.fewshot(task, None)
    assert len(shots) == n and source.startswith("lm-eval")
    local, _ = data.fewshot(task, BENCHDATA)
    if task == "truthfulqa":  # the same primer as OLMES's
        assert shots == [{"question": s["question"], "answer": s["answer"]} for s in local]
    if task == "math500":  # the same exemplars up to two typos in OLMES's copy (a stray "}", a lost "\\")
        assert [s["solution"].rsplit("Final Answer", 1)[1] for s in shots] == [
            s["solution"].rsplit("Final Answer", 1)[1] for s in local]


def test_the_hub_path_fails_fast_offline_with_the_fix():
    with pytest.raises(LiteDeltaError, match="--data-dir"):
        data.load_rows("gsm8k", None)


def test_a_missing_local_file_is_named(tmp_path):
    with pytest.raises(LiteDeltaError, match="gsm8k/test.jsonl"):
        data.load_rows("gsm8k", tmp_path)


def test_subsets_are_deterministic_and_stratified():
    rows, _ = data.load_rows("mmlu", BENCHDATA)
    strata = [r["subject"] for r in rows]
    a = data.select_ids(strata, 114, "stratified", seed=0)
    assert a == data.select_ids(strata, 114, "stratified", seed=0)
    assert a != data.select_ids(strata, 114, "stratified", seed=1)
    per_subject = {s: sum(strata[i] == s for i in a) for s in set(strata)}
    assert set(per_subject.values()) == {2}  # 114 = 2 of each of 57 equal subjects
    few = data.select_ids(strata, 5, "stratified", seed=0)
    assert len({strata[i] for i in few}) == 5 and few == sorted(few)
    assert data.select_ids(strata, 5, "first", seed=0) == [0, 1, 2, 3, 4]
    assert data.select_ids([None] * 10, 3, "stratified", seed=0) == [0, 1, 2]
    assert data.select_ids(strata, None, "stratified", seed=0) == list(range(len(rows)))
