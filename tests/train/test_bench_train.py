"""`lite-delta bench train` at smoke size on the CPU: exact-length pairs, the figures, the planner beside them."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lite_delta.cli import main
from lite_delta.train.bench import bench_settings, synthetic_pairs
from lite_delta.train.plan import estimate, load_shapes


@pytest.fixture(scope="module")
def student(tiny_student) -> str:
    return tiny_student


@pytest.mark.parametrize("max_length", [16, 33, 64, 257])
def test_synthetic_pairs_are_exactly_max_length_as_trl_tokenizes_them(student, max_length):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    rows = synthetic_pairs(tokenizer, max_length, 3)
    assert len(rows) == 3
    for side in ("chosen", "rejected"):
        ids = tokenizer(rows[0]["prompt"] + rows[0][side] + tokenizer.eos_token)["input_ids"]
        assert len(ids) == max_length and ids[-1] == tokenizer.eos_token_id
    assert rows[0]["chosen"] != rows[0]["rejected"]


def test_settings_run_smallest_first():
    assert bench_settings([2048, 1024], [2, 1]) == [(1024, 1), (1024, 2), (2048, 1), (2048, 2)]  # by tokens, then length


def test_bench_train_peft_writes_figures_and_the_planner_estimate(tmp_path, student, capsys):
    out = tmp_path / "train.json"
    main(["bench", "train", "--student", student, "--max-length", "64", "--batch", "1", "--backend", "peft",
          "--steps", "2", "--out", str(out), "--report-to", "tensorboard", "--run-name", "smoke"])
    printed = capsys.readouterr().out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard" / "smoke-peft-L64-b1"))  # TensorBoard's own reader
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    result = json.loads(out.read_text())
    assert result["backend"] == "peft" and result["device"] == "CPU" and result["steps"] == 2
    assert result["environment"]["packages"]["torch"] and result["environment"]["cores"] >= 1
    (run,) = result["runs"]
    assert (run["max_length"], run["batch"], run["tokens_per_step"]) == (64, 1, 128)
    assert len(run["step_seconds"]) == 3 and all(s > 0 for s in run["step_seconds"])  # 1 warm-up + 2 timed
    assert run["seconds_per_step"] == pytest.approx(sum(run["step_seconds"][1:]) / 2, abs=1e-3)
    assert run["tokens_per_s"] == pytest.approx(128 / run["seconds_per_step"], rel=1e-2)
    assert run["peak_allocated_gib"] is None  # no GPU: no memory figure rather than a made-up one
    planned = estimate(load_shapes(student), batch_size=1, max_length=64, lora_r=16).total_gib
    assert run["planner"]["total_gib"] == pytest.approx(planned, abs=1e-3)
    assert "peft    max_length    64 batch 1:" in printed and "planner" in printed


def test_bench_train_rejects_an_unknown_backend(student, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "train", "--student", student, "--max-length", "64", "--backend", "jax"])
    assert exc.value.code == 2
    assert "--backend must be auto, unsloth, peft or both" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="Unsloth is not installed")
def test_bench_train_a_2x2_grid_on_both_backends_reports_every_row(tmp_path, student):
    """Several settings in one process per backend: TRL wraps the model again for each (a fresh adapter for PEFT,
    a frozen "ref" copy beside Unsloth's), which failed from the second or third setting on."""
    out = tmp_path / "train.json"
    main(["bench", "train", "--student", student, "--max-length", "32", "--max-length", "48", "--batch", "1",
          "--batch", "2", "--backend", "both", "--steps", "1", "--warmup", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["backends"]) == {"unsloth", "peft"}
    assert not any(info.get("error") for info in result["backends"].values())
    settings = [(32, 1), (48, 1), (32, 2), (48, 2)]
    assert [(r["backend"], r["max_length"], r["batch"]) for r in result["runs"]] == \
        [(b, n, k) for b in ("unsloth", "peft") for n, k in settings]
    assert not any("error" in r for r in result["runs"])
    assert all(r["tokens_per_step"] == 2 * r["max_length"] * r["batch"] and r["tokens_per_s"] > 0
               for r in result["runs"])
    for backend in ("unsloth", "peft"):
        part = json.loads((tmp_path / f"train-{backend}.json").read_text())
        assert part["backend"] == backend and len(part["runs"]) == 4
    assert result["backends"]["unsloth"]["quantization"] == "nf4"  # Unsloth loads 4-bit, its CPU fallback too
    assert result["backends"]["peft"]["quantization"] == "none"  # PEFT on the CPU: full precision unless asked


def test_bench_train_peft_on_a_4bit_base_over_several_settings(tmp_path, student):
    out = tmp_path / "train.json"
    main(["bench", "train", "--student", student, "--max-length", "32", "--max-length", "48", "--batch", "1",
          "--batch", "2", "--backend", "peft", "--quantization", "nf4", "--steps", "1", "--warmup", "0",
          "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["quantization"] == "nf4" and len(result["runs"]) == 4
    assert all(r["trainable_dtype"] == ["float32"] and r["tokens_per_s"] > 0 for r in result["runs"])
