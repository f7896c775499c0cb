"""Which floating-point precision a run trains and evaluates in: chosen for the hardware, never bf16
on a card without it (a T4 is compute 7.5; bf16 starts with Ampere, 8.0)."""

from __future__ import annotations

from typing import Literal

from lite_delta.errors import LiteDeltaError

Precision = Literal["auto", "bf16", "fp16", "fp32"]


def supports_bf16(capability: tuple[int, int] | None) -> bool:
    return capability is not None and capability >= (8, 0)


def resolve_precision(requested: str, capability: tuple[int, int] | None, gpu_name: str = "this GPU") -> str:
    """`capability` is the CUDA compute capability, or None on the CPU (where training is fp32)."""
    if capability is None:
        if requested in ("auto", "fp32"):
            return "fp32"
        raise LiteDeltaError(f"precision {requested} needs a CUDA GPU; on the CPU training runs in fp32 "
                             "(set precision: auto or fp32)")
    if requested == "auto":
        return "bf16" if supports_bf16(capability) else "fp16"
    if requested == "bf16" and not supports_bf16(capability):
        cap = ".".join(map(str, capability))
        raise LiteDeltaError(f"{gpu_name} (compute {cap}) has no bf16: set precision: fp16 (or auto)")
    return requested


def mixed_precision(precision: str) -> dict:
    """A trainer's autocast flags for the run's precision (resolve_precision decides what a device may use)."""
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def device_capability() -> tuple[tuple[int, int] | None, str]:
    import torch

    if not torch.cuda.is_available():
        return None, "CPU"
    return tuple(torch.cuda.get_device_capability(0)), torch.cuda.get_device_name(0)


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
