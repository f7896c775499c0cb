"""Paired bootstrap comparison on synthetic runs whose true difference is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.evaluate.compare import compare


def write_run(folder, tasks: dict[str, list[tuple[int, float, str | None]]]):
    folder.mkdir(parents=True)
    results = {"model": folder.name, "adapter": None, "tasks": {}}
    for task, items in tasks.items():
        (folder / task).mkdir()
        lines = [json.dumps({"id": i, "score": s, "stratum": g}) for i, s, g in items]
        (folder / task / "predictions.jsonl").write_text("\n".join(lines) + "\n")
        results["tasks"][task] = {"score": float(np.mean([s for _, s, _ in items])), "n": len(items),
                                  "ids": [i for i, _, _ in items],
                                  "settings": {"prompt_format": f"{task}/v1", "max_tokens": 8, "samples": 1,
                                               "temperature": 0.0, "data_sha256": "x"}}
    (folder / "results.json").write_text(json.dumps(results))


def test_a_real_improvement_has_a_ci_above_zero_and_identical_runs_a_zero_ci(tmp_path):
    rng = np.random.default_rng(1)
    base_gsm = rng.random(400) < 0.4
    tuned_gsm = base_gsm | (rng.random(400) < 0.3)  # tuned fixes ~30% of the misses, breaks none
    subjects = [f"s{i % 4}" for i in range(200)]
    mmlu_b = rng.random(200) < 0.5
    write_run(tmp_path / "base", {
        "gsm8k": [(i, float(x), None) for i, x in enumerate(base_gsm)],
        "mmlu": [(i, float(x), g) for i, (x, g) in enumerate(zip(mmlu_b, subjects))],
    })
    write_run(tmp_path / "tuned", {
        "gsm8k": [(i, float(x), None) for i, x in enumerate(tuned_gsm)],
        "mmlu": [(i, float(x), g) for i, (x, g) in enumerate(zip(mmlu_b, subjects))],
        "popqa": [(0, 1.0, None)],
    })
    report = compare(tmp_path / "base", tmp_path / "tuned", tmp_path / "cmp", n_bootstrap=2000)
    gsm = next(r for r in report["tasks"] if r["task"] == "gsm8k")
    assert gsm["diff"] == pytest.approx(tuned_gsm.mean() - base_gsm.mean())
    assert 0 < gsm["ci95"][0] < gsm["diff"] < gsm["ci95"][1]
    assert gsm["losses"] == 0 and gsm["wins"] == int((tuned_gsm & ~base_gsm).sum())
    mmlu = next(r for r in report["tasks"] if r["task"] == "mmlu")
    assert mmlu["diff"] == 0 and mmlu["ci95"] == [0.0, 0.0]
    macro = report["macro_average"]
    assert macro["diff"] == pytest.approx(gsm["diff"] / 2)
    assert macro["ci95"][0] > 0
    assert report["only_in_one_run"] == ["popqa"]
    table = (tmp_path / "cmp/compare.md").read_text()
    assert "| gsm8k | 400 |" in table and "macro average" in table
    assert (tmp_path / "cmp/compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "cmp/compare.json").read_text())["tasks"][0]["task"] == "gsm8k"


def test_unpaired_items_are_left_out_and_reported(tmp_path):
    write_run(tmp_path / "a", {"drop": [(0, 1.0, None), (1, 0.0, None), (2, 0.5, None)]})
    write_run(tmp_path / "b", {"drop": [(1, 1.0, None), (2, 0.5, None), (3, 0.0, None)]})
    report = compare(tmp_path / "a", tmp_path / "b", tmp_path / "cmp", n_bootstrap=200)
    assert report["tasks"][0]["n"] == 2 and report["tasks"][0]["diff"] == pytest.approx(0.5)
    assert any("only 2 of 3/3 items" in w for w in report["warnings"])


def test_runs_without_common_tasks_or_results_are_refused(tmp_path):
    write_run(tmp_path / "a", {"drop": [(0, 1.0, None)]})
    write_run(tmp_path / "b", {"popqa": [(0, 1.0, None)]})
    with pytest.raises(LiteDeltaError, match="share no evaluated task"):
        compare(tmp_path / "a", tmp_path / "b", tmp_path / "cmp")
    with pytest.raises(LiteDeltaError, match="no results.json"):
        compare(tmp_path / "a", tmp_path / "missing", tmp_path / "cmp")


@pytest.mark.parametrize("results, says", [
    ([], "not a `lite-delta eval` results file"), ({"tasks": []}, "not a `lite-delta eval` results file"),
    ({"tasks": {"drop": 3}}, "not a `lite-delta eval` results file"),
    ({"tasks": {"drop": {"ids": [0]}}}, "not a `lite-delta eval` results file"),
    ({"tasks": {"drop": {"settings": {}, "ids": "0"}}}, "not a `lite-delta eval` results file"),
])
def test_results_of_the_wrong_shape_are_one_clear_error(results, says, tmp_path):
    write_run(tmp_path / "a", {"drop": [(0, 1.0, None)]})
    write_run(tmp_path / "b", {"drop": [(0, 1.0, None)]})
    (tmp_path / "b" / "results.json").write_text(json.dumps(results))
    with pytest.raises(LiteDeltaError, match=says):
        compare(tmp_path / "a", tmp_path / "b", tmp_path / "cmp")


@pytest.mark.parametrize("line", ['{"id": 0}', '{"id": 0, "score": "high"}', '{"id": 0, "score": NaN}'])
def test_predictions_without_a_numeric_score_are_one_clear_error(line, tmp_path):
    write_run(tmp_path / "a", {"drop": [(0, 1.0, None)]})
    write_run(tmp_path / "b", {"drop": [(0, 1.0, None)]})
    (tmp_path / "b" / "drop" / "predictions.jsonl").write_text(line + "\n")
    with pytest.raises(LiteDeltaError, match="numeric `score`|not finite"):
        compare(tmp_path / "a", tmp_path / "b", tmp_path / "cmp")
