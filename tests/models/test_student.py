"""Students from GGUF: converted once to a trainable safetensors folder; the real TRL DPO step runs on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from lite_delta.errors import LiteDeltaError
from lite_delta.models.student import prepare_student


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory, tiny_gguf):
    return prepare_student(str(tiny_gguf), tmp_path_factory.mktemp("students"))


def test_gguf_student_is_converted_once_with_the_gguf_eos(tiny_student, tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_student
    config = json.loads((__import__("pathlib").Path(folder) / "config.json").read_text())
    assert "quantization_config" not in config, "a converted student is trainable"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<|im_end|>", "the GGUF's end token, not transformers' guess (<|im_start|>)"
    assert tokenizer.pad_token is not None
    model = AutoModelForCausalLM.from_pretrained(folder)
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    ids = torch.tensor([tokenizer.encode("Hello there, how are you?")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    mtime = (__import__("pathlib").Path(folder) / "config.json").stat().st_mtime
    assert prepare_student(str(tiny_gguf), __import__("pathlib").Path(folder).parent) == folder
    assert (__import__("pathlib").Path(folder) / "config.json").stat().st_mtime == mtime, "reused, not redone"


def test_other_student_references(tmp_path):
    assert prepare_student("allenai/Llama-3.1-Tulu-3-8B-SFT", tmp_path) == "allenai/Llama-3.1-Tulu-3-8B-SFT"
    (tmp_path / "empty").mkdir()
    with pytest.raises(LiteDeltaError, match="no config.json"):
        prepare_student(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(LiteDeltaError, match="student not found"):
        prepare_student("./no/such/model", tmp_path)
    with pytest.raises(LiteDeltaError, match="not found"):
        prepare_student(str(tmp_path / "missing.gguf"), tmp_path)


def test_trl_dpo_with_peft_runs_on_cpu_and_moves_the_margin(tiny_student, tmp_path):
    """The real TRL 1.15 DPOTrainer + PEFT LoRA, on the CPU (needs the PyTorch log-prob stand-in)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from lite_delta.train.trl_cpu import use_torch_logprob_without_gpu

    use_torch_logprob_without_gpu()
    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    model = AutoModelForCausalLM.from_pretrained(tiny_student)
    rows = [
        {"prompt": [{"role": "user", "content": f"Name a colour, number {i}."}],
         "chosen": [{"role": "assistant", "content": "- red\n- blue\n- green"}],
         "rejected": [{"role": "assistant", "content": "Red."}]}
        for i in range(4)
    ]
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=8,
                     learning_rate=5e-3, beta=0.5, loss_type="sigmoid_norm", max_length=128, logging_steps=1,
                     report_to=[], save_strategy="no", use_cpu=True, seed=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert len(logs) == 8 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6), "the adapter starts as the reference"
    assert logs[-1]["rewards/margins"] > 0.05 and logs[-1]["rewards/accuracies"] == 1.0
