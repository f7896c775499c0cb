"""The unsloth backend's own code path, on Unsloth 2026.10.9's CPU fallback (4-bit base, its LoRA and
gradient checkpointing, TRL's DPOTrainer). Runs in a subprocess: importing Unsloth patches trl and
transformers for the whole process. Skipped where Unsloth is not installed — see README
("Unsloth on a CPU") for the install these tests use; CI installs it (.ci/run)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROWS = [
    {"prompt": [{"role": "user", "content": f"Give me ideas for {topic}."}],
     "chosen": [{"role": "assistant", "content": f"1. {topic} plan\n2. {topic} list\n3. {topic} notes"}],
     "rejected": [{"role": "assistant", "content": f"Try {topic}."}]}
    for topic in ("dinner", "a trip", "a garden", "a party", "a book club", "a hike", "a game night", "a picnic")
]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="Unsloth is not installed")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_gguf):
    from lite_delta.models.student import prepare_student

    folder = tmp_path_factory.mktemp("unsloth")
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    student = prepare_student(str(tiny_gguf), folder / "students")
    out = folder / "run"
    command = [sys.executable, "-m", "lite_delta.cli", "train", "--pairs", str(pairs), "--student", student,
               "--out", str(out), "--backend", "unsloth", "--max-steps", "6", "--lr", "5e-3", "--beta", "0.5"]
    env = {**os.environ, "UNSLOTH_DISABLE_CPU_FALLBACK": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return student, out, done.stdout + done.stderr


def test_unsloth_backend_trains_and_learns(run):
    student, out, output = run
    summary = json.loads((out / "train.json").read_text())
    assert summary["backend"] == "unsloth"
    assert "imported before unsloth" not in output, "Unsloth must be imported before trl/transformers/peft"
    assert "Unsloth" in output  # its own banner: the model came through FastLanguageModel
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(steps) == 6
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"] + 0.05, "the reward margin rises"
    assert steps[-1]["rewards/chosen"] > steps[-1]["rewards/rejected"]


def test_unsloth_adapter_loads_with_plain_peft(run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    student, out, _ = run
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student), out / "adapter")
    ids = torch.tensor([[1, 5, 42, 7]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    assert (tuned - base).abs().max() > 1e-4
