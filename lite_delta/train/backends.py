"""The two ways to load a LoRA-wrapped student: Unsloth's kernels (GPU default) or transformers + PEFT.

Both leave TRL's DPOTrainer without a `ref_model`, so the reference is the student with its adapter
disabled: one copy of the weights in memory.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

from lite_delta.config import TrainConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.precision import torch_dtype

log = logging.getLogger(__name__)

# "all-linear" spelled out for Unsloth, which wants names: every attention and MLP projection.
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPU_EXTRA = "pip install -e '.[gpu]'"


def unsloth_available() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def resolve_backend(requested: str, cuda: bool) -> str:
    """auto: Unsloth on a CUDA GPU when it is installed, PEFT otherwise (and always on the CPU)."""
    if requested == "auto":
        return "unsloth" if cuda and unsloth_available() else "peft"
    if requested == "unsloth" and not unsloth_available():
        raise LiteDeltaError(f"--backend unsloth needs Unsloth: {GPU_EXTRA} (or use --backend peft)")
    return requested


def import_unsloth() -> None:
    """Unsloth patches trl, transformers and peft as it is imported, so it has to come first."""
    if "unsloth" in sys.modules:
        return
    late = [name for name in ("trl", "transformers", "peft") if name in sys.modules]
    if late:
        log.warning("%s imported before unsloth: some of Unsloth's patches may not apply", ", ".join(late))
    import unsloth  # noqa: F401


def targets(cfg: TrainConfig) -> list[str] | str:
    if cfg.lora_targets == "all-linear":
        return PROJECTIONS
    return cfg.lora_targets


def load_unsloth(student: str, cfg: TrainConfig, precision: str):
    """4-bit base through FastLanguageModel, LoRA through its get_peft_model; (model, tokenizer, None)."""
    import_unsloth()
    from unsloth import FastLanguageModel

    dtype = None if precision == "fp32" else torch_dtype(precision)  # None: Unsloth picks (its CPU mode: bf16)
    model, tokenizer = FastLanguageModel.from_pretrained(
        student, max_seq_length=cfg.max_length, load_in_4bit=True, dtype=dtype
    )
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0, bias="none",
        target_modules=targets(cfg), use_gradient_checkpointing="unsloth", random_state=cfg.seed,
    )
    return model, getattr(tokenizer, "tokenizer", tokenizer), None


def load_peft(student: str, cfg: TrainConfig, precision: str, cuda: bool):
    """NF4 4-bit with double quantization on a GPU, full precision on the CPU; (model, LoraConfig)."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    if not cuda:
        model = AutoModelForCausalLM.from_pretrained(student, dtype=torch_dtype(precision))
    else:
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(precision),
        )
        model = AutoModelForCausalLM.from_pretrained(student, quantization_config=quant, device_map={"": 0})
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
        target_modules=cfg.lora_targets, task_type="CAUSAL_LM",
    )
    return model, lora
