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
