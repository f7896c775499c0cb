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


def sharded_weights() -> bool:
    """True under FSDP or DeepSpeed ZeRO-3 (set by accelerate launch): the weights are split across GPUs."""
    import os

    from transformers.integrations import is_deepspeed_zero3_enabled

    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or is_deepspeed_zero3_enabled()


def load_unsloth(student: str, cfg: TrainConfig, precision: str, *, device_index: int | None = None):
    """4-bit base through FastLanguageModel, LoRA through its get_peft_model; (model, tokenizer, None).
    `device_index`: under DDP, the GPU of this process's local rank (Unsloth's multi-GPU mode is DDP)."""
    import_unsloth()
    from unsloth import FastLanguageModel

    dtype = None if precision == "fp32" else torch_dtype(precision)  # None: Unsloth picks (its CPU mode: bf16)
    placement = {} if device_index is None else {"device_map": {"": device_index}}
    model, tokenizer = FastLanguageModel.from_pretrained(
        student, max_seq_length=cfg.max_length, load_in_4bit=True, dtype=dtype, **placement
    )
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0, bias="none",
        target_modules=targets(cfg), use_gradient_checkpointing="unsloth", random_state=cfg.seed,
    )
    return model, getattr(tokenizer, "tokenizer", tokenizer), None


def load_peft(student: str, cfg: TrainConfig, precision: str, cuda: bool, *, device_index: int = 0,
              sharded: bool = False):
    """NF4 4-bit with double quantization on a GPU, full precision on the CPU; (model, LoraConfig).
    On a GPU: one 4-bit copy on GPU `device_index` (DDP: the local rank's); `sharded` (FSDP, ZeRO-3): the
    4-bit weights stored as the compute dtype and no device_map, so the sharding engine can split them."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    if not cuda:
        model = AutoModelForCausalLM.from_pretrained(student, dtype=torch_dtype(precision))
    else:
        from transformers import BitsAndBytesConfig

        storage = {"bnb_4bit_quant_storage": torch_dtype(precision)} if sharded else {}  # FSDP-QLoRA: bf16
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(precision), **storage,
        )
        placement = {"dtype": torch_dtype(precision)} if sharded else {"device_map": {"": device_index}}
        model = AutoModelForCausalLM.from_pretrained(student, quantization_config=quant, **placement)
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
        target_modules=cfg.lora_targets, task_type="CAUSAL_LM",
    )
    return model, lora


def load_student(backend: str, student: str, cfg: TrainConfig, precision: str, cuda: bool, tokenizer,
                 template: str | None = None, *, device_index: int | None = None, sharded: bool = False):
    """The LoRA-wrapped student on `backend`, ready for a TRL trainer: (model, tokenizer, lora, precision).

    Unsloth brings its own tokenizer, which gets the run's chat template (where given) and `tokenizer`'s
    pad token; on the CPU it picks its own dtype, returned as the run's precision. Without a GPU, TRL's
    Triton-only log-prob kernel is swapped for the torch one. `device_index`: this process's GPU (DDP);
    `sharded`: FSDP or ZeRO-3."""
    if backend == "unsloth":
        model, unsloth_tokenizer, lora = load_unsloth(student, cfg, precision, device_index=device_index)
        unsloth_tokenizer.pad_token = tokenizer.pad_token
        if template is not None:
            unsloth_tokenizer.chat_template = template
        tokenizer = unsloth_tokenizer
        if not cuda:  # Unsloth's CPU mode picks its own dtype (bf16 where the CPU has it)
            precision = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(model.dtype), "fp32")
    else:
        model, lora = load_peft(student, cfg, precision, cuda, device_index=device_index or 0, sharded=sharded)
    if not cuda:
        from lite_delta.train.trl_cpu import use_torch_logprob_without_gpu

        use_torch_logprob_without_gpu()  # TRL's chunked log-prob kernel is Triton-only
    return model, tokenizer, lora, precision
