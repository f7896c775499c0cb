"""A rejected teacher derived from the chosen one: the chosen GGUF requantized harder by llama.cpp's quantizer.

One download instead of two, and the delta between the teachers comes from quantization damage alone
(`lite-delta meter` says whether it is big enough to teach anything). Requantizing a file that is already
quantized is allowed and lossy: the new rounding lands on top of the old one, so the derived model is
somewhat worse than a quant made from the original weights; an F16/BF16 source gives the cleaner result.

The file is made once per (source file, quant type) and kept in a cache shared by all runs,
``~/.cache/lite-delta/derived/`` (``$LITE_DELTA_CACHE/derived`` when set): one chosen teacher serves
many runs and recipes, as the Hugging Face cache serves the downloads, and a run folder deleted to
start over does not throw the quantization away. A JSON beside each file records its provenance.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from lite_delta.errors import LiteDeltaError
from lite_delta.files import cache_folder, write_json
from lite_delta.models.merge_gguf import QUANTS, check_quant, quantize_gguf
from lite_delta.models.refs import model_identity, resolve_model

# general.file_type values of unquantized GGUFs (llama_ftype): F32, F16, BF16.
UNQUANTIZED_FILE_TYPES = {0: "F32", 1: "F16", 32: "BF16"}
LOSSY_NOTE = ("the source is already quantized: requantizing adds a second rounding on top of the first "
              "(lossy; an F16/BF16 source gives a cleaner derived teacher)")


def check_derive(quant: str, field: str = "teachers.rejected.derive") -> str:
    """The llama.cpp quant type's canonical name; a LiteDeltaError naming ``field`` for an unknown one."""
    try:
        return check_quant(quant)
    except LiteDeltaError:
        raise LiteDeltaError(f"{field}: unknown llama.cpp quant type {quant!r}; use one of {', '.join(QUANTS)} "
                             "(the IQ types need an importance matrix and are not offered)") from None


def source_file_type(path: Path) -> str:
    """The GGUF's general.file_type as llama.cpp names it (F16, Q4_1, ...), or "unknown"."""
    import gguf
    import llama_cpp

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        return "unknown"
    value = int(field.contents())
    if value in UNQUANTIZED_FILE_TYPES:
        return UNQUANTIZED_FILE_TYPES[value]
    names = [n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp)
             if n.startswith("LLAMA_FTYPE_MOSTLY_") and getattr(llama_cpp, n) == value]
    return names[0] if names else f"file_type {value}"


def derive_gguf(source_ref: str, quant: str, *, cache_dir: str | Path | None = None) -> tuple[Path, dict]:
    """(path of SOURCE requantized to QUANT, its provenance); made on the first call, reused afterwards."""
    quant = check_derive(quant)
    source = resolve_model(source_ref)
    identity = model_identity(source)
    folder = cache_folder(cache_dir, "derived", "derived-model")
    path = folder / f"{source.stem}.{identity['sha256_head_tail'][:16]}.{quant}.gguf"
    record = path.with_name(path.name + ".json")
    source_type = source_file_type(source)
    provenance = {
        "derived_from": source_ref, "source_file": str(source), "source_identity": identity,
        "source_file_type": source_type, "quant": quant, "quantizer": "llama.cpp llama_model_quantize",
        "requantized": source_type not in UNQUANTIZED_FILE_TYPES.values(),
    }
    if provenance["requantized"]:
        provenance["note"] = LOSSY_NOTE
    previous = _read(record)
    if path.is_file() and previous.get("source_identity") == identity and previous.get("quant") == quant \
            and previous.get("identity") == model_identity(path):
        return path, {**previous, "file": str(path), "reused": True}
    with captured_stderr() as log:  # llama.cpp prints one warning per tensor it cannot give QUANT
        quantize_gguf(source, path, quant)
    fallback = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback quantization", "".join(log))
    if fallback:
        provenance["fallback_tensors"] = f"{fallback[1]} of {fallback[2]}"
        provenance["fallback_note"] = (
            f"llama.cpp gave {fallback[1]} of {fallback[2]} tensors another type (rows not a multiple of {quant}'s "
            f"block size): the derived teacher is less damaged than {quant} suggests; the meter measures how much")
    provenance.update(file=str(path), identity=model_identity(path))
    write_json(record, provenance)
    return path, {**provenance, "reused": False}


SLOW_CPU_TYPES = ("Q4_1", "Q5_1")  # GGUF file types without a fast batched matmul in llama.cpp's CPU backend
CPU_READ_QUANT = "Q8_0"  # what `batched_gguf` reads those as


def batched_gguf(ref: str, cache_dir: str | Path | None = None) -> tuple[str, str]:
    """(the GGUF llama.cpp runs for batched evaluation of the model `ref`: many answers sampled or scored
    together; its weights in words).

    llama.cpp's CPU matmul over a batch of tokens is much slower for Q4_1 and Q5_1 than for the other common
    types (SmolLM2-135M, 2-core Xeon with AVX-512: a 70-token prefill with logits at 286 tokens/s for Q4_1 and
    259 for Q5_1, against 480 for Q8_0, 458 for Q4_K_M, 468 for F16; 32 sequences sampled together at 191
    against 257 tokens/s). So where `ref` is Q4_1 or Q5_1 and llama.cpp runs on the CPU, batched evaluation
    reads the same weights requantized to Q8_0, made once (``derive_gguf``; cache: `cache_dir`, else
    $LITE_DELTA_CACHE/derived). Both types group 32 weights per block, so each weight moves by at most ~6 % of
    its own Q4_1 step (~3 % of a Q5_1 step). Elsewhere (other types, a GPU build) it is `ref`'s own file."""
    from lite_delta.inference.engine import gpu_offload_available

    path = resolve_model(ref)
    kind = source_file_type(path)
    if kind not in SLOW_CPU_TYPES or gpu_offload_available():
        return str(path), kind
    derived, _ = derive_gguf(ref, CPU_READ_QUANT, cache_dir=cache_dir)
    return str(derived), f"{kind} read as its {CPU_READ_QUANT} requantization"


@contextlib.contextmanager
def captured_stderr():
    """What C code writes to file descriptor 2 in the block: yields a list that holds the text afterwards."""
    sys.stderr.flush()
    text: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read())


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
