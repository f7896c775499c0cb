"""The two ways to load a LoRA-wrapped student: Unsloth's kernels (GPU default) or transformers + PEFT.

Both leave TRL's DPOTrainer without a `ref_model`, so the reference is the student with its adapter
disabled (PEFT) or a frozen copy of the fresh adapter (Unsloth's PeftModel): one copy of the weights.

The base is 4-bit NF4 (QLoRA) or full precision, by `train.quantization`: NF4 on a CUDA GPU and on the
CPU too where asked (bitsandbytes 0.50 has CPU kernels for NF4), so the real QLoRA path runs in CI.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

from lite_delta.config import TrainConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.files import lite_delta_cache
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
    """Unsloth patches trl, transformers and peft as it is imported, so it has to come first. The code it
    generates goes to lite-delta's cache (UNSLOTH_COMPILE_LOCATION), not into the working directory."""
    if "unsloth" in sys.modules:
        return
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(lite_delta_cache() / "unsloth_compiled_cache"))
    late = [name for name in ("trl", "transformers", "peft") if name in sys.modules]
    if late:
        log.warning("%s imported before unsloth: some of Unsloth's patches may not apply", ", ".join(late))
    import unsloth  # noqa: F401


def resolve_quantization(requested: str, backend: str, cuda: bool) -> str:
    """"nf4" (a 4-bit base, QLoRA) or "none". auto: NF4 on a CUDA GPU, and always with Unsloth (4-bit is what its
    loader is for; its CPU fallback loads NF4 too); full precision for PEFT on the CPU, where it is faster."""
    if requested == "auto":
        return "nf4" if cuda or backend == "unsloth" else "none"
    return requested


def targets(cfg: TrainConfig) -> list[str] | str:
    if cfg.lora_targets == "all-linear":
        return PROJECTIONS
    return cfg.lora_targets


def sharded_weights() -> bool:
    """True under FSDP or DeepSpeed ZeRO-3 (set by accelerate launch): the weights are split across GPUs."""
    import os

    from transformers.integrations import is_deepspeed_zero3_enabled

    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or is_deepspeed_zero3_enabled()


def load_unsloth(student: str, cfg: TrainConfig, precision: str, *, quantization: str = "nf4",
                 device_index: int | None = None):
    """The base through FastLanguageModel (4-bit unless quantization is "none"), LoRA through its
    get_peft_model; (model, tokenizer, None). `device_index`: under DDP, the GPU of this process's local rank
    (Unsloth's multi-GPU mode is DDP)."""
    import_unsloth()
    from unsloth import FastLanguageModel

    dtype = None if precision == "fp32" else torch_dtype(precision)  # None: Unsloth picks (its CPU mode: bf16)
    placement = {} if device_index is None else {"device_map": {"": device_index}}
    # use_exact_model_name: without it Unsloth's GPU loader swaps a Hub id for its own pre-quantized repository
    # (Qwen/Qwen2.5-3B-Instruct -> unsloth/Qwen2.5-3B-Instruct-unsloth-bnb-4bit, some layers kept in 16 bit), and
    # the adapter would be evaluated and exported on another base than the one it was trained on. (Its CPU
    # fallback loads names as given.)
    model, tokenizer = FastLanguageModel.from_pretrained(
        student, max_seq_length=cfg.max_length, load_in_4bit=quantization == "nf4", dtype=dtype,
        use_exact_model_name=True, **placement
    )
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
        target_modules=targets(cfg), use_gradient_checkpointing="unsloth", random_state=cfg.seed,
    )
    return model, getattr(tokenizer, "tokenizer", tokenizer), None


def load_peft(student: str, cfg: TrainConfig, precision: str, cuda: bool, *, quantization: str = "nf4",
              device_index: int = 0, sharded: bool = False):
    """NF4 4-bit with double quantization (quantization "nf4") or the full-precision base; (model, LoraConfig).
    The unquantized parts (embeddings, norms, LM head) load in the training precision, as QLoRA does, so fp16
    autocast on a T4 never meets bf16 weights. On a GPU: one copy on GPU `device_index` (DDP: the local
    rank's); `sharded` (FSDP, ZeRO-3): the 4-bit weights stored as the compute dtype and no device_map, so the
    sharding engine can split them. On the CPU the NF4 weights use bitsandbytes' CPU kernels."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(precision)
    if quantization == "none":
        placement = {"device_map": {"": device_index}} if cuda and not sharded else {}
        model = AutoModelForCausalLM.from_pretrained(student, dtype=dtype, **placement)
    else:
        from transformers import BitsAndBytesConfig

        storage = {"bnb_4bit_quant_storage": dtype} if sharded else {}  # FSDP-QLoRA: bf16
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, **storage,
        )
        placement = {} if sharded else {"device_map": {"": device_index if cuda else "cpu"}}
        model = AutoModelForCausalLM.from_pretrained(student, quantization_config=quant, dtype=dtype, **placement)
    if getattr(cfg, "init_adapter", None) is not None:  # a later round: on from the last round's adapter
        from peft import PeftModel

        # TRL keeps a frozen copy of it as the reference ("ref"), so DPO measures this round's change
        return PeftModel.from_pretrained(model, str(cfg.init_adapter), is_trainable=True), None
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
        target_modules=cfg.lora_targets, task_type="CAUSAL_LM",
    )
    return model, lora


def load_student(backend: str, student: str, cfg: TrainConfig, precision: str, cuda: bool, tokenizer,
                 template: str | None = None, *, quantization: str = "nf4", device_index: int | None = None,
                 sharded: bool = False):
    """The LoRA-wrapped student on `backend`, ready for a TRL trainer: (model, tokenizer, lora, precision).

    Unsloth brings its own tokenizer, which gets the run's chat template (where given) and `tokenizer`'s
    pad token; on the CPU it picks its own dtype, returned as the run's precision. Without a GPU, TRL's
    Triton-only log-prob kernel is swapped for the torch one. `quantization`: "nf4" or "none" (see
    resolve_quantization); `device_index`: this process's GPU (DDP); `sharded`: FSDP or ZeRO-3."""
    if backend == "unsloth":
        model, unsloth_tokenizer, lora = load_unsloth(student, cfg, precision, quantization=quantization,
                                                      device_index=device_index)
        unsloth_tokenizer.pad_token = tokenizer.pad_token
        if template is not None:
            unsloth_tokenizer.chat_template = template
        tokenizer = unsloth_tokenizer
        if not cuda:  # Unsloth's CPU mode picks its own dtype (bf16 where the CPU has it)
            precision = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(model.dtype), "fp32")
    else:
        model, lora = load_peft(student, cfg, precision, cuda, quantization=quantization,
                                device_index=device_index or 0, sharded=sharded)
    if not cuda:
        from lite_delta.train.trl_cpu import use_torch_logprob_without_gpu

        use_torch_logprob_without_gpu()  # TRL's chunked log-prob kernel is Triton-only
    return model, tokenizer, lora, precision


def is_quantized(model) -> bool:
    """True for a model whose base weights are 4- or 8-bit (bitsandbytes), PEFT-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def trainable_dtypes(model) -> list[str]:
    """The dtypes of the trainable parameters, sorted ("float32" for fp32 master weights)."""
    return sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad})


def fp32_trainable_weights(trainer, *, sharded: bool = False) -> int:
    """Put a QLoRA run's trainable (LoRA) weights back in fp32 after TRL built its trainer; returns how many.

    TRL 1.15's DPOTrainer and SFTTrainer cast every trainable parameter of a 4-bit model to bf16 in their
    __init__ ("When using QLoRA, the PEFT adapter weights are converted to bf16"; Unsloth 2026.10.9's patch
    that removes it does not match TRL 1.15). With fp16 mixed precision (T4 and older cards) the gradient
    scaler then meets bf16 gradients, which its CUDA unscale kernel does not implement, so the first optimizer
    step fails; with bf16, an update below half of bf16's spacing at the weight rounds away (Adam moves a weight
    by about lr, 2e-5, while a LoRA A weight of ~0.02 has neighbours 1.2e-4 apart). fp32 master weights, cast to the
    compute dtype by autocast in the forward, are the usual QLoRA recipe and cost 2 bytes more per LoRA parameter
    (~80 MB for r=16 on an 8B model). Left alone under FSDP and ZeRO-3 (`sharded`), which flatten parameters of one dtype.
    Call it before `trainer.train()`: the optimizer is built there, from these parameters."""
    import torch

    if sharded or not is_quantized(trainer.model):
        return 0
    cast = 0
    for param in trainer.model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast
