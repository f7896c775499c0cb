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



EXACT_NAME_PROBE = """
import json, sys
import unsloth
from unsloth.models.loader_utils import get_model_name
from lite_delta.config import TrainConfig
from lite_delta.train import backends

seen = {}
def record(*args, **kwargs):
    seen.update(kwargs, name=args[0] if args else kwargs.get("model_name"))
    raise SystemExit(json.dumps({"mapped": get_model_name(sys.argv[1], load_in_4bit=True), "call": {
        k: v for k, v in seen.items() if isinstance(v, (str, bool, int, type(None)))}}))
unsloth.FastLanguageModel.from_pretrained = record
backends.load_unsloth(sys.argv[1], TrainConfig(student=sys.argv[1], pairs="p.jsonl", out="o"), "bf16")
"""


def test_unsloth_is_asked_for_the_exact_hub_student_not_its_own_prequantized_copy(tmp_path):
    """Unsloth's GPU loader resolves a Hub id through its mapper (the real function, pinned version) to its own
    pre-quantized repository, some layers kept in 16 bit; only use_exact_model_name=True skips that. Its CPU
    fallback never maps names, so a CPU cannot load the swapped model: the probe records the loader call."""
    repo = "Qwen/Qwen2.5-3B-Instruct"
    env = {**os.environ, "UNSLOTH_DISABLE_CPU_FALLBACK": "0", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", EXACT_NAME_PROBE, repo], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)  # where a bare `import unsloth` writes its generated code
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result["mapped"].lower().startswith("unsloth/qwen2.5-3b-instruct"), "the mapper swaps the repository"
    assert result["call"]["name"] == repo and result["call"]["use_exact_model_name"] is True
