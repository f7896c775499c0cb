"""A LoRA adapter folded into the base GGUF's own tensors, then quantized by llama.cpp's quantizer.

As llama.cpp's `llama-export-lora` does: each adapted tensor is dequantized (`gguf.quants.dequantize`),
gets `alpha / r * B @ A` added in the GGUF's layout (for llama, q/k rows permuted as the base's are)
and is written as F16 (or F32; an F32 base tensor stays F32); every tensor the adapter does not
touch is copied as it is, same type and bytes (a Q8_0 token_embd stays Q8_0, not rounded to F16).
The file is written tensor by tensor (memory stays at one tensor) with every metadata key of the
base, tokenizer and chat template included. `llama_model_quantize` then makes the quant the user
asked for (default Q4_K_M); llama.cpp picks per-tensor types itself.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from lite_delta.errors import LiteDeltaError
from lite_delta.models.lora_gguf import BaseGGUF, PeftLora, gguf_lora_pairs, read_base_gguf, read_peft_lora

# Quants llama.cpp makes without an importance matrix (the IQ types need one).
QUANTS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M", "Q5_0", "Q5_1",
          "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0")
MERGED_DTYPES = {"f16": (np.float16, 1), "f32": (np.float32, 0)}  # numpy type, llama_ftype (general.file_type)


def check_quant(quant: str) -> str:
    name = quant.upper()
    if name not in QUANTS:
        raise LiteDeltaError(f"unknown quant {quant!r}: use one of {', '.join(QUANTS)}")
    return name


def merge_to_gguf(peft_dir: str | Path, base_gguf: str | Path, out_dir: str | Path, *, quant: str | None = "Q4_K_M",
                  dtype: str = "f16", name: str = "merged") -> dict[str, Path | None]:
    """Write OUT_DIR/NAME-DTYPE.gguf (base + adapter) and, unless quant is None, OUT_DIR/NAME-QUANT.gguf.

    Returns {"unquantized": path, "quantized": path or None}."""
    quant = check_quant(quant) if quant is not None else None
    if dtype not in MERGED_DTYPES:
        raise LiteDeltaError(f"merged dtype must be one of {', '.join(MERGED_DTYPES)}, not {dtype!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = write_merged(read_peft_lora(peft_dir), read_base_gguf(base_gguf), out_dir / f"{name}-{dtype}.gguf",
                          dtype=dtype)
    quantized = quantize_gguf(merged, out_dir / f"{name}-{quant}.gguf", quant) if quant else None
    return {"unquantized": merged, "quantized": quantized}


def write_merged(lora: PeftLora, base: BaseGGUF, out_file: Path, *, dtype: str = "f16") -> Path:
    alpha, pairs = gguf_lora_pairs(lora, base)
    return write_float_gguf(base, out_file, dtype=dtype, alpha=alpha, pairs=pairs)


def write_float_gguf(base: BaseGGUF, out_file: str | Path, *, dtype: str = "f16", alpha: float = 0.0,
                     pairs: dict | None = None, copy_untouched: bool = True) -> Path:
    """The base plus alpha / r * B @ A on each tensor in `pairs`, those written as F16/F32.

    Untouched tensors are copied as they are; `copy_untouched=False` dequantizes them to `dtype` too
    (vectors stay F32): with no pairs, the base's own weights as a float GGUF."""
    import gguf

    pairs = pairs or {}
    out_file = Path(out_file)
    float_type, file_type = MERGED_DTYPES[dtype]
    reader = gguf.GGUFReader(str(base.path))
    tmp = out_file.with_name(out_file.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch=base.arch)
    copy_metadata(reader, w)
    w.add_file_type(file_type)
    plan = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        if copy_untouched and t.name not in pairs:
            plan.append((t, shape, None))
            w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, raw_dtype=t.tensor_type)
            continue
        kind = np.float32 if len(shape) == 1 or t.tensor_type == gguf.GGMLQuantizationType.F32 else float_type
        plan.append((t, shape, kind))
        w.add_tensor_info(t.name, shape, np.dtype(kind), int(np.prod(shape)) * np.dtype(kind).itemsize)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t, shape, kind in plan:
            if kind is None:
                w.write_tensor_data(t.data)
                continue
            weight = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
            if t.name in pairs:
                a, b = pairs[t.name]
                weight = weight + np.float32(alpha / a.shape[0]) * (b @ a)
            w.write_tensor_data(np.ascontiguousarray(weight, dtype=kind))
        w.close()
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out_file)
    return out_file


def copy_metadata(reader, writer) -> None:
    """Every key-value of the base (tokenizer, chat template, hyperparameters) but the file's own."""
    from gguf import GGUFValueType

    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue  # the header, and keys the writer sets itself
        if key == "general.alignment":
            writer.add_custom_alignment(int(f.contents()))
            continue
        vtype = f.types[0]
        sub_type = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), vtype, sub_type=sub_type)


def quantize_gguf(src: str | Path, dst: str | Path, quant: str = "Q4_K_M") -> Path:
    """llama.cpp's own quantizer (`llama_model_quantize`), as `llama-quantize SRC DST QUANT` runs it."""
    import llama_cpp
    from llama_cpp import _logger

    quant = check_quant(quant)
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.allow_requantize = True
    _logger.set_verbose(False)  # its per-tensor log (hundreds of lines) is noise here; errors still print
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise LiteDeltaError(f"llama.cpp could not quantize {Path(src).name} to {quant} (code {rc})")
    tmp.replace(dst)
    return dst
