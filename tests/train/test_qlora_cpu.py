"""Real 4-bit NF4 QLoRA on the CPU: bitsandbytes 0.50's CPU kernels under the real TRL DPOTrainer/SFTTrainer.

The base stays 4-bit (bitsandbytes Linear4bit, uint8 storage, before and after optimizer steps); the
trainable LoRA weights are fp32 master weights whatever the mixed precision (TRL 1.15 casts them to bf16
for a 4-bit model, which the fp16 gradient scaler of a T4 cannot unscale); the loss falls; the adapter
exports to a GGUF LoRA that changes llama.cpp's answers; --resume continues a killed run exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lite_delta.config import TrainConfig
from lite_delta.train.sft import SUMMARY, train_sft
from lite_delta.train.stage import train

ROWS = [
    {"prompt": [{"role": "user", "content": f"List some {thing}."}],
     "chosen": [{"role": "assistant", "content": f"- one {thing}\n- two {thing}\n- three {thing}"}],
     "rejected": [{"role": "assistant", "content": f"Some {thing}."}]}
    for thing in ("fruits", "birds", "tools", "colours", "rivers", "games", "trees", "songs")
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("qlora") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _cfg(student, pairs, out, **kw) -> TrainConfig:
    base = dict(student=student, pairs=pairs, out=out, quantization="nf4", batch_size=2, grad_accum=1,
                learning_rate=5e-3, beta=0.5, max_length=128, lora_r=8, lora_alpha=16, save_steps=100,
                warmup_ratio=0.0, lr_scheduler="constant")
    return TrainConfig(**{**base, **kw})


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _adapter_dtypes(adapter) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        return {str(f.get_tensor(name).dtype) for name in f.keys()}


def test_qlora_nf4_loads_4bit_on_the_cpu_and_keeps_it_4bit_through_dpo_steps(tiny_student, pairs, tmp_path):
    """The loader and TRL as the train stage uses them, looked at directly: Linear4bit before and after."""
    import bitsandbytes as bnb
    from datasets import Dataset
    from transformers import AutoTokenizer

    from lite_delta.train.backends import fp32_trainable_weights, load_student
    from lite_delta.train.stage import dpo_args

    cfg = _cfg(tiny_student, pairs, tmp_path / "run", max_steps=2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model, tokenizer, lora, _ = load_student("peft", tiny_student, cfg, "fp32", False, tokenizer, quantization="nf4")
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    four_bit = [m for m in linear if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 7 * model.config.num_hidden_layers, "every attention and MLP projection is NF4"
    assert all(m.weight.dtype == torch.uint8 and m.weight.quant_state.quant_type == "nf4" for m in four_bit)
    before = {id(m): m.weight.detach().clone() for m in four_bit}

    from trl import DPOTrainer

    from lite_delta.train.trl_cpu import use_torch_logprob_without_gpu

    use_torch_logprob_without_gpu()
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in ROWS]
    trainer = DPOTrainer(model=model, args=dpo_args(cfg, tmp_path / "ckpt", cuda=False, backend="peft",
                                                    precision="fp32"),
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora)
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.bfloat16}, "TRL 1.15 casts a QLoRA adapter to bf16"
    assert fp32_trainable_weights(trainer) == len(trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    trainer.train()
    after = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(after) == len(four_bit)
    assert all(torch.equal(before[id(m)], m.weight) for m in after if id(m) in before), "the 4-bit base is frozen"
    assert all(p.dtype == torch.float32 for p in trainable.values())


def test_qlora_nf4_dpo_on_the_cpu_learns_with_fp32_lora_weights(tiny_student, pairs, tmp_path):
    out = train(_cfg(tiny_student, pairs, tmp_path / "run", max_steps=6), progress=False)
    steps = _log(out)
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.01, "the DPO loss falls"
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"] + 0.05
    summary = json.loads((out / "train.json").read_text())
    assert summary["quantization"] == "nf4" and summary["trainable_dtype"] == "float32"
    assert _adapter_dtypes(out / "adapter") == {"torch.float32"}
    assert "| base weights, trainable weights | nf4, float32 |" in (out / "adapter" / "README.md").read_text()


def test_qlora_nf4_sft_on_the_cpu_learns_with_fp32_lora_weights(tiny_student, pairs, tmp_path):
    out = train_sft(_cfg(tiny_student, pairs, tmp_path / "sft", max_steps=6), progress=False)
    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 7))
    assert log[-1]["loss"] < log[0]["loss"], "the imitation loss falls"
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["quantization"] == "nf4" and summary["trainable_dtype"] == "float32"
    assert _adapter_dtypes(out / "adapter") == {"torch.float32"}


@pytest.mark.parametrize("card,capability,precision", [("Tesla T4", (7, 5), "fp16"), ("NVIDIA A100", (8, 0), "bf16")])
def test_qlora_mixed_precision_leaves_the_optimizer_fp32_weights_and_gradients(tiny_student, pairs, tmp_path,
                                                                             monkeypatch, card, capability, precision):
    """The precision a T4 (fp16) and an A100 (bf16) get, with the CPU's autocast: a CPU has no CUDA gradient
    scaler, so this asserts the dtypes the scaler would see. The optimizer's state has its parameters' dtype,
    and a gradient always has its parameter's dtype: fp32 here, the only dtype GradScaler's CUDA kernel both
    accepts (bf16: not implemented) and unscales without refusing (fp16: "Attempting to unscale FP16
    gradients"). On TRL's own cast they would be bf16."""
    import lite_delta.train.stage as stage

    monkeypatch.setattr(stage, "device_capability", lambda: (capability, card))
    out = train(_cfg(tiny_student, pairs, tmp_path / "run", max_steps=2, save_steps=2), progress=False)
    summary = json.loads((out / "train.json").read_text())
    assert summary["precision"] == precision and summary["trainable_dtype"] == "float32"
    state = torch.load(out / "checkpoints" / "checkpoint-2" / "optimizer.pt", map_location="cpu", weights_only=True)
    moments = [t for s in state["state"].values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    assert _adapter_dtypes(out / "adapter") == {"torch.float32"}
    assert _log(out)[-1]["loss"] < _log(out)[0]["loss"], "it trains under autocast"


@pytest.fixture(scope="module")
def smollm2_qlora_adapter(tmp_path_factory, smollm2_student, pairs):
    """4 QLoRA DPO steps on the real SmolLM2, its base loaded as NF4 on the CPU."""
    folder = tmp_path_factory.mktemp("smollm2_qlora")
    cfg = _cfg(smollm2_student, pairs, folder / "run", max_steps=4, learning_rate=2e-3)
    return train(cfg, progress=False) / "adapter"


def test_a_qlora_adapter_exports_to_gguf_and_changes_llama_cpps_answers(tmp_path, smollm2_gguf,
                                                                        smollm2_qlora_adapter):
    from lite_delta.inference.engine import BatchedEngine, GGUFModel, Request, SamplingParams
    from lite_delta.models.lora_gguf import export_adapter

    gguf_adapter = export_adapter(smollm2_qlora_adapter, smollm2_gguf, tmp_path / "adapter.gguf")
    model = GGUFModel(smollm2_gguf)
    prompts = ["List some fruits.", "What should I pack for a picnic?", "Name a few board games."]
    requests = [Request(str(i), model.tokenize_prompt(model.render([{"role": "user", "content": p}])), seed=0)
                for i, p in enumerate(prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=24)

    def answers(adapter) -> dict[str, list[int]]:
        engine = BatchedEngine(model, slots=3, n_ctx_per_seq=256, adapter=adapter)
        try:
            return {c.request.key: c.token_ids for c in engine.generate(requests, params)}
        finally:
            engine.close()

    try:
        base, tuned = answers(None), answers(model.load_adapter(gguf_adapter))
    finally:
        model.close()
    assert sum(base[k] != tuned[k] for k in base) >= 2, "the QLoRA adapter changes llama.cpp's greedy answers"


STEPS = 10  # a checkpoint every step: enough of them that the kill lands mid-run


def _train_command(student, pairs, out, *extra) -> list[str]:
    return [sys.executable, "-m", "lite_delta.cli", "train", "--student", str(student), "--pairs", str(pairs),
            "--out", str(out), "--quantization", "nf4", "--max-steps", str(STEPS), "--lr", "5e-3", "--beta", "0.5",
            "--config", str(out.parent / "train.yaml"), *extra]


def test_a_killed_qlora_run_resumes_to_the_same_steps(tiny_student, pairs, tmp_path, kill_once_written):
    (tmp_path / "train.yaml").write_text("batch_size: 2\ngrad_accum: 1\nmax_length: 128\nlora_r: 8\nlora_alpha: 16\n"
                                         "save_steps: 1\nwarmup_ratio: 0\nlr_scheduler: constant\n")
    full = tmp_path / "full"
    done = subprocess.run(_train_command(tiny_student, pairs, full), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    kill_once_written(_train_command(tiny_student, pairs, killed),
                      killed / "checkpoints" / "checkpoint-2" / "trainer_state.json", timeout=300, poll=0.05)
    assert not (killed / "train.json").exists()

    done = subprocess.run(_train_command(tiny_student, pairs, killed, "--resume"), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed, reference = _log(killed), _log(full)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1)), "no step lost or logged twice"
    for a, b in zip(resumed, reference):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-4)
    assert json.loads((killed / "train.json").read_text())["resumed_from"] is not None
