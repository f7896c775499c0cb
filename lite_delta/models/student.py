"""The student model: a Hub id, a local model directory, or a GGUF dequantized once to safetensors.

transformers reads GGUF (`gguf_file=`) by dequantizing every tensor, which takes tens of seconds
and leaves a model that can neither be trained (it is flagged as GGUF-quantized) nor saved. So a
GGUF student is converted once: rebuilt from its config and weights without the quantization
flag, its end-of-sequence token taken from the GGUF metadata (transformers' converter can pick the
wrong one: SmolLM2's comes out as <|im_start|> instead of <|im_end|>), and saved as safetensors
in a folder named after the file's identity, so later stages and reruns load it fast.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from lite_delta.errors import LiteDeltaError
from lite_delta.models.refs import model_identity, resolve_model

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_gguf_reference(ref: str) -> bool:
    return ref.startswith("pkg://") or ref.lower().endswith(".gguf")


def prepare_student(ref: str, cache_dir: str | Path) -> str:
    """Something `from_pretrained` loads directly: a Hub id, or a local folder with a config.json."""
    if is_gguf_reference(ref):
        path = resolve_model(ref)
        out = Path(cache_dir) / f"{path.stem}-{model_identity(path)['sha256_head_tail'][:12]}"
        if not (out / "config.json").is_file():
            dequantize_gguf(path, out)
        return str(out)
    folder = Path(ref)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise LiteDeltaError(f"student folder {folder} has no config.json: point at a saved transformers model")
        return str(folder)
    if folder.exists() or ref.startswith((".", "/", "~")) or not HUB_ID.match(ref):
        raise LiteDeltaError(
            f"student not found: {ref} (give a Hub id like ORG/NAME, a model folder, or a .gguf reference)"
        )
    return ref


def gguf_special_tokens(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    ids = {}
    for name in ("bos", "eos", "padding"):
        field = fields.get(f"tokenizer.ggml.{name}_token_id")
        if field is not None:
            ids[name] = int(field.contents())
    return ids


def dequantize_gguf(path: Path, out: Path) -> Path:
    """Convert a GGUF into a trainable transformers model folder (written beside, then moved in)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError) as exc:
        raise LiteDeltaError(f"transformers cannot load {path.name} as a student: {exc}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    special = gguf_special_tokens(path)
    if "eos" in special:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(special["eos"])
        model.config.eos_token_id = model.generation_config.eos_token_id = special["eos"]
    if tokenizer.pad_token is None:
        pad = special.get("padding", special.get("eos"))
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad) if pad is not None else tokenizer.eos_token
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
