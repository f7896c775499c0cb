"""lite_delta/tracking.py: a finished run's pairs, meter and evaluation results into its training run's
TensorBoard, read back with TensorBoard's own reader; a rerun of the report replaces them, never doubles them."""

from __future__ import annotations

import json

import pytest
from share.share_run import TEACHER, write_run

from lite_delta.tracking import RESULTS_SUFFIX, log_run_results


def _board(logdir) -> tuple[dict, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return ({tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]},
            {tag: acc.Tensors(tag) for tag in acc.Tags()["tensors"]})


@pytest.fixture
def run(tmp_path, tiny_adapter, tiny_export, smollm2_gguf):
    run = write_run(tmp_path, adapter=tiny_adapter, export=tiny_export, student=TEACHER, teacher_gguf=smollm2_gguf)
    (run / "train" / "tensorboard").mkdir()
    (run / "meter").mkdir()
    (run / "meter" / "meter.json").write_text(json.dumps({"overall": {
        "diff": 0.12, "ci95": [0.05, 0.2], "verdict": "clear", "advice": "generate"}}))
    return run


def test_pairs_meter_and_suite_results_land_at_the_training_runs_last_step(run):
    assert log_run_results(run, ["none"]) is None  # no tracker, nothing written
    written = log_run_results(run, ["tensorboard"])
    assert written is not None and written.name.endswith(RESULTS_SUFFIX)
    scalars, texts = _board(run / "train" / "tensorboard")
    compare = json.loads((run / "evaluate" / "suite" / "compare" / "compare.json").read_text())
    for row in compare["tasks"]:
        for key in ("base", "tuned", "diff"):
            assert scalars[f"evaluate/{row['task']}/{key}"] == [(2, pytest.approx(row[key]))]  # train.json: 2 steps
    assert scalars["evaluate/macro_average/diff"] == [(2, pytest.approx(compare["macro_average"]["diff"]))]
    assert scalars["pairs/pairs"] == [(2, 3.0)] and scalars["pairs/filtered/below_margin"] == [(2, 1.0)]
    assert scalars["meter/delta"] == [(2, pytest.approx(0.12))]
    assert "meter/verdict/text_summary" in texts


def test_a_second_report_replaces_the_results_instead_of_drawing_them_twice(run):
    log_run_results(run, ["tensorboard"])
    log_run_results(run, ["tensorboard"])
    assert len(list((run / "train" / "tensorboard").glob(f"*{RESULTS_SUFFIX}"))) == 1
    scalars, _ = _board(run / "train" / "tensorboard")
    assert len(scalars["pairs/pairs"]) == 1
