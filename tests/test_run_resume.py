"""`lite-delta run` killed in the middle of a stage and rerun: the same outputs as an uninterrupted run,
held-out pairs and TensorBoard included (the split kept, each step logged once)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = ["prompts.n=3", "generation.samples_per_prompt=2", "generation.max_tokens=24", "generation.parallel=4",
         "pairing.min_margin=0", "train.max_steps=4", "train.save_steps=1", "train.batch_size=2",
         "train.grad_accum=1", "train.max_length=256", "train.learning_rate=1e-3", "train.warmup_ratio=0",
         "evaluate=null", "contrast.sft=false",
         # held-out pairs (1 of the 3 prompts) evaluated every 2 steps, and TensorBoard: resume keeps both
         "train.eval_fraction=0.3", "train.eval_steps=2", "train.report_to=tensorboard",
         # an HF-folder student: its conversion to GGUF has its own end-to-end run (test_hf_student_run); on-policy
         # rounds need the student's GGUF (tests/test_rounds_run.py runs them)
         "student_convert.enabled=false", "rounds.n=1"]


def command(runs: Path, student: str, *extra: str) -> list[str]:
    sets = [x for o in [*SMOKE, f"student={student}", *extra] for x in ("--set", o)]
    return [sys.executable, "-m", "lite_delta.cli", "run", "--runs-dir", str(runs), *sets]


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train" / "train_log.jsonl").read_text().splitlines()]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The run's TensorBoard scalars, through TensorBoard's own reader (every event file of the folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "train" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, smollm2_student):
    runs = tmp_path_factory.mktemp("full")
    subprocess.run(command(runs, smollm2_student), check=True, capture_output=True, timeout=900)
    return runs / "demo"


def test_killed_during_training_then_rerun_matches_an_uninterrupted_run(tmp_path, uninterrupted, smollm2_student,
                                                                       kill_once_written):
    kill_once_written(command(tmp_path, smollm2_student),
                      tmp_path / "demo" / "train" / "checkpoints" / "checkpoint-2" / "trainer_state.json")
    run = tmp_path / "demo"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "running" and manifest["stages"]["pair"]["status"] == "done"

    done = subprocess.run(command(tmp_path, smollm2_student), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generate: done, settings unchanged" in done.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("generate", "pair", "train", "report"))
    assert (run / "pairs" / "pairs.jsonl").read_bytes() == (uninterrupted / "pairs" / "pairs.jsonl").read_bytes()
    resumed, full = log(run), log(uninterrupted)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4], "no step lost or logged twice"
    for a, b in zip(resumed, full):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-4)
        assert ("eval_loss" in a) == ("eval_loss" in b) == (a["step"] in (2, 4))  # held out: the same pairs
        if "eval_loss" in a:
            assert a["eval_loss"] == pytest.approx(b["eval_loss"], abs=1e-5)
    assert (run / "train" / "split.json").read_bytes() == (uninterrupted / "train" / "split.json").read_bytes()
    board, full_board = scalars(run), scalars(uninterrupted)
    # the killed attempt's steps after checkpoint-2 are purged: TensorBoard holds each step once, as uninterrupted
    assert [s for s, _ in board["train/loss"]] == [s for s, _ in full_board["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in board["eval/loss"]] == [2, 4]
    stats = json.loads((run / "pairs" / "stats.json").read_text())
    assert board["pairs/pairs"] == [(4, float(stats["pairs"]))]  # the pair stage's stats at the last step
    assert json.loads((run / "train" / "train.json").read_text())["resumed_from"].endswith("checkpoint-2") or \
        json.loads((run / "train" / "train.json").read_text())["resumed_from"] is not None
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    assert (run / "figures" / "training.png").stat().st_size > 10_000


def test_a_finished_run_reruns_nothing_and_a_changed_setting_reruns_from_its_stage(uninterrupted, smollm2_student):
    runs = uninterrupted.parent
    before = (uninterrupted / "train" / "train_log.jsonl").read_bytes()
    # trackers are not settings: logging to none now reruns nothing
    done = subprocess.run(command(runs, smollm2_student, "train.report_to=none"), capture_output=True, text=True,
                          timeout=300, check=True)
    assert done.stderr.count("settings unchanged") == 4
    assert (uninterrupted / "train" / "train_log.jsonl").read_bytes() == before
    changed = subprocess.run(command(runs, smollm2_student, "train.max_steps=2"), capture_output=True, text=True,
                             timeout=900, check=True)
    assert "generate: done" in changed.stderr and "pair: done" in changed.stderr
    assert [r["step"] for r in log(uninterrupted)] == [1, 2]
    manifest = json.loads((uninterrupted / "manifest.json").read_text())
    assert manifest["stages"]["train"]["settings"]["train"]["max_steps"] == 2
    assert manifest["chat_templates"]["student"]["sha256"] == manifest["chat_templates"]["teacher samples"]["sha256"]
    assert {k: manifest["training"][k] for k in ("backend", "device", "precision")} == {
        "backend": "peft", "device": "CPU", "precision": "fp32"}
    assert manifest["training"]["pairs_source"]["path"] == str(uninterrupted / "pairs" / "pairs.jsonl")
    assert "report_to" not in manifest["stages"]["train"]["settings"]["train"]
