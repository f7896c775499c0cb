"""`lite-delta run` with TensorBoard and held-out pairs, on the demo recipe at smoke size: the training curves,
the held-out evaluations, the pairs' stats and the utility evaluation in one TensorBoard run, read back with
TensorBoard's own reader; trackers are not settings (switching them off reruns nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = ["prompts.n=4", "generation.samples_per_prompt=2", "generation.max_tokens=24", "generation.parallel=4",
         "pairing.min_margin=0", "pairing.pairs_per_prompt=1", "train.max_steps=4", "train.batch_size=1",
         "train.grad_accum=1", "train.max_length=256", "train.learning_rate=1e-3", "train.warmup_ratio=0",
         "contrast.sft=false", "export.enabled=false", "evaluate.utility.prompts.n=2",
         "evaluate.utility.samples_per_prompt=2", "evaluate.utility.max_tokens=16"]
TRACKED = ["train.report_to=tensorboard", "train.eval_fraction=0.25", "train.eval_steps=2"]


def command(runs: Path, *sets: str) -> list[str]:
    return [sys.executable, "-m", "lite_delta.cli", "run", "--runs-dir", str(runs),
            *[x for s in [*SMOKE, *sets] for x in ("--set", s)]]


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("tracked_runs")
    done = subprocess.run(command(runs, *TRACKED), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return runs / "demo"


def test_one_tensorboard_run_holds_training_held_out_pairs_and_evaluation(run):
    scalars = _scalars(run / "train" / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in scalars["eval/rewards/margins"]] == [2, 4]
    stats = json.loads((run / "pairs" / "stats.json").read_text())
    assert scalars["pairs/pairs"] == [(4, float(stats["pairs"]))]  # at the training run's last step
    utility = json.loads((run / "evaluate" / "utility" / "summary.json").read_text())
    assert scalars["evaluate/utility/tuned"][-1][1] == pytest.approx(utility["bars"]["tuned"]["mean"])
    assert scalars["evaluate/utility/tuned_minus_chosen"][-1][1] == \
        pytest.approx(utility["tuned_minus_chosen"]["diff"])
    summary = json.loads((run / "train" / "train.json").read_text())
    assert summary["run_name"] == "demo" and summary["held_out"]["evaluations"] == 2
    report = (run / "report.md").read_text()
    assert "Held-out pairs: " in report


def test_trackers_are_not_settings_and_a_wrong_trainer_arg_stops_before_generating(run, tmp_path):
    manifest = json.loads((run / "manifest.json").read_text())
    assert "report_to" not in manifest["stages"]["train"]["settings"]["train"]
    again = subprocess.run(command(run.parent, "train.eval_fraction=0.25", "train.eval_steps=2"),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "train: done, settings unchanged" in again.stderr
    bad = subprocess.run(command(tmp_path, "train.trainer_args={weight_decay: heavy}"), capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode == 2
    assert "train.trainer_args.weight_decay: 'heavy' is not a float" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "demo" / "generate").exists()
