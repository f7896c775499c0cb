"""A transformers student (Hub id or model folder) as a GGUF llama.cpp runs: our own HF -> GGUF converter.

Written with the `gguf` package only (no compiled llama.cpp tools): `GGUFWriter` for the file,
`TensorNameMap` for tensor names, `SpecialVocab` for merges, special tokens, `add_bos`/`add_eos` and the
chat template. What llama.cpp needs to run the model exactly:

- hyperparameters from config.json, in the keys llama.cpp reads for the architecture;
- RoPE: `rope_theta`; Llama 3.1's `rope_type: llama3` becomes a `rope_freqs` tensor (the per-dimension
  divisor of the rotary frequency, Meta's published wavelength rule), as llama.cpp expects it;
  `linear` becomes `rope.scaling.type/factor`; any other scaling is refused rather than dropped;
- tensors under llama.cpp's names; for `llama`, the rows of q/k permuted into llama.cpp's rotary layout
  (the same permutation the LoRA export applies); 2-D weights F16/BF16 (or F32), 1-D ones F32;
  `lm_head` left out where the embeddings are tied;
- the tokenizer (byte-level BPE from tokenizer.json): tokens, types (control for special added
  tokens, user-defined for the other added ones, unused for the padding rows past the tokenizer),
  merges, and llama.cpp's pre-tokenizer name, recognised from the pre-tokenizer's own definition.

Tensors are streamed: each is read from its safetensors shard, converted and written before the next,
so memory holds one tensor (for an 8B Llama the largest is the 128256 x 4096 embedding: 1 GiB in bf16,
2 GiB as float32 on its way to F16). Checked against llama.cpp's own `convert_hf_to_gguf.py`
(tests/models/test_hf_gguf.py). `student_gguf` converts once per student and keeps the file in
`$LITE_DELTA_CACHE/converted`, keyed by the model's identity, as derived teachers are kept.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from lite_delta.errors import LiteDeltaError
from lite_delta.files import cache_folder, lite_delta_cache, write_json

log = logging.getLogger(__name__)

# transformers model_type -> llama.cpp (GGUF) architecture
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
PERMUTES_QK = {"llama"}  # llama.cpp's llama graph expects q/k rows in its own rotary order
DTYPES = ("auto", "f16", "bf16", "f32")
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32}  # general.file_type (llama_ftype)
CONVERT_BYTES_PER_S = 150e6  # for the dry run; measured 0.22 (F16) and 0.32 GB/s (BF16) on a 2-core EPYC (README)

# llama.cpp's pre-tokenizer for each published byte-level pre-tokenizer definition (tokenizer.json).
# A regex split followed by a byte-level step without its own regex:
SPLIT_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",  # Qwen2, Qwen2.5, Qwen3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",  # Llama 3, 3.1, 3.2, 3.3 (and Tulu 3, built on them)
}
LOOKS_SPECIAL = re.compile(r"^<\|.*\|>$")  # <|fim_prefix|> and kin, added without the special flag


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LiteDeltaError(f"{path.parent} has no {path.name}: point at a saved transformers model") from None
    except (OSError, ValueError) as exc:
        raise LiteDeltaError(f"cannot read {path}: {exc}") from None


def model_architecture(config: dict, where: str) -> str:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise LiteDeltaError(
            f"{where}: model_type {model_type!r} does not convert to GGUF here: lite-delta converts "
            f"{', '.join(ARCHITECTURES)} students (set student_gguf to a GGUF of the same model to use another)")
    return ARCHITECTURES[model_type]


def rope_settings(config: dict) -> tuple[float, dict | None]:
    """(rope_theta, scaling or None) from either config layout: transformers 5's `rope_parameters`
    or the Hub's `rope_theta` + `rope_scaling`."""
    params = dict(config.get("rope_parameters") or {})
    params = params.get("full_attention", params) if isinstance(params.get("full_attention"), dict) else params
    scaling = dict(config.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    merged = {**scaling, **params}
    kind = (merged.get("rope_type") or merged.get("type") or "default").lower()
    return theta, (None if kind == "default" else {**merged, "rope_type": kind})


def head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def llama3_rope_factors(config: dict) -> np.ndarray:
    """The divisor of each rotary frequency under Llama 3.1's scaling (Meta's wavelength rule): 1 for
    short wavelengths, `factor` for long ones, a smooth blend between; llama.cpp divides by it."""
    theta, scaling = rope_settings(config)
    dim = head_dim(config)
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings", 8192))
    f32 = np.float32  # in float32 throughout, as transformers computes the scaled frequencies it trains with
    freqs = f32(1.0) / f32(theta) ** (np.arange(0, dim, 2, dtype=f32) / f32(dim))
    wavelen = f32(2 * np.pi) / freqs
    smooth = (f32(old_context) / wavelen - f32(low)) / f32(high - low)
    blend = f32(1) / ((f32(1) - smooth) / f32(factor) + smooth)
    factors = np.where(wavelen < f32(old_context / high), f32(1), np.where(wavelen > f32(old_context / low), f32(factor), blend))
    return factors.astype(f32)


def pre_tokenizer_name(tokenizer_json: dict, where: str) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE tokenizer, from its pre-tokenizer definition."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in SPLIT_PRE and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):
            return SPLIT_PRE[pattern]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # SmolLM/SmolLM2: single digits, then GPT-2's byte-level split
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own split
    raise LiteDeltaError(
        f"{where}: its pre-tokenizer ({json.dumps(pre)[:200]}) is not one lite-delta maps to llama.cpp's "
        "(qwen2, llama-bpe, smollm, gpt-2); give student_gguf, a GGUF of this model made by llama.cpp's converter")


def vocabulary(folder: Path, vocab_size: int) -> tuple[str, list[str], list[int]]:
    """(pre-tokenizer name, tokens, token types) for the GGUF, from tokenizer.json."""
    import gguf

    file = folder / "tokenizer.json"
    if not file.is_file():
        hint = " (a SentencePiece tokenizer.model only: not converted here)" if (folder / "tokenizer.model").is_file() else ""
        raise LiteDeltaError(f"{folder} has no tokenizer.json{hint}: lite-delta converts byte-level BPE tokenizers")
    data = _read_json(file)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise LiteDeltaError(f"{file}: a {model.get('type')} tokenizer; lite-delta converts byte-level BPE tokenizers")
    pre = pre_tokenizer_name(data, str(file))
    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        special = added.get("special") or LOOKS_SPECIAL.match(added["content"])
        by_id[added["id"]] = (added["content"], gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    if by_id and max(by_id) >= vocab_size:
        raise LiteDeltaError(f"{file} has token id {max(by_id)}, past the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return pre, tokens, types


class Weights:
    """The safetensors tensors of a model folder (index or single file), read one at a time.

    Only one shard is open (memory-mapped) at a time, and it is closed before the next is opened: pages
    of a mapped file that has been read count as resident while it stays mapped."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(_read_json(index)["weight_map"].values()))
        elif (folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            bins = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
            raise LiteDeltaError(f"{folder} has no safetensors weights{' (only ' + ', '.join(bins) + ')' if bins else ''}: "
                                 "lite-delta loads weights as safetensors only (never pickles)")
        self.folder = folder
        self.where: dict[str, str] = {}
        self.meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for file in files:
            with safe_open(str(folder / file), framework="pt") as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    self.where[name] = file
                    self.meta[name] = (tuple(piece.get_shape()), piece.get_dtype())
        self._open: tuple[str, object] | None = None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.meta[name][0]

    def dtype(self, name: str) -> str:
        return self.meta[name][1]

    def get(self, name: str):
        from safetensors import safe_open

        file = self.where[name]
        if self._open is None or self._open[0] != file:
            self.close()
            handle = safe_open(str(self.folder / file), framework="pt")
            self._open = (file, handle.__enter__())
        return self._open[1].get_tensor(name)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].__exit__(None, None, None)
            self._open = None


def _permute(rows, n_head: int):
    from lite_delta.models.lora_gguf import permute_qk_rows

    return permute_qk_rows(rows, n_head)


def tensor_plan(config: dict, arch: str, weights: Weights, dtype: str) -> list[tuple[str, str | None, tuple, str]]:
    """[(gguf name, source name or None for generated, numpy shape, gguf type name)] in file order."""
    import gguf

    arch_enum = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(arch_enum, int(config["num_hidden_layers"]))
    tied = bool(config.get("tie_word_embeddings", False))
    plan = []
    _, scaling = rope_settings(config)
    if scaling and scaling["rope_type"] == "llama3":
        plan.append(("rope_freqs.weight", None, (head_dim(config) // 2,), "F32"))
    for source in weights.where:
        if source.endswith("rotary_emb.inv_freq"):
            continue  # a buffer transformers recomputes; llama.cpp computes its own
        if source == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd for the output where no output.weight exists
        name = names.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise LiteDeltaError(f"the student's tensor {source} has no {arch} GGUF name: it would be lost "
                                 "(an architecture variant lite-delta does not convert)")
        shape = weights.shape(source)
        kind = "F32" if len(shape) <= 1 or dtype == "f32" else dtype.upper()
        plan.append((name, source, shape, kind))
    return plan


def resolve_dtype(dtype: str, weights: Weights) -> str:
    if dtype not in DTYPES:
        raise LiteDeltaError(f"conversion dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype != "auto":
        return dtype
    for name in weights.where:
        if len(weights.shape(name)) >= 2:
            return "bf16" if weights.dtype(name) == "BF16" else "f16"  # the highest-fidelity 16-bit type
    return "f16"


def write_hparams(w, config: dict, arch: str) -> None:
    n_head = int(config["num_attention_heads"])
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_context_length(int(config["max_position_embeddings"]))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(n_head)
    w.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    theta, scaling = rope_settings(config)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    if config.get("head_dim"):
        w.add_key_length(int(config["head_dim"]))
        w.add_value_length(int(config["head_dim"]))
    if arch == "llama":
        w.add_vocab_size(int(config["vocab_size"]))
        w.add_rope_dimension_count(head_dim(config))
    if scaling is None or scaling["rope_type"] == "llama3":
        return  # llama3: the rope_freqs tensor carries it
    if scaling["rope_type"] == "linear":
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
        return
    raise LiteDeltaError(f"RoPE scaling {scaling['rope_type']!r} in config.json is not converted here (default, "
                         "llama3 and linear are): remove rope_scaling for the native context, or give student_gguf")


def convert_hf_to_gguf(model_dir: str | Path, out_file: str | Path, *, dtype: str = "auto",
                       name: str | None = None, permute: bool = True) -> Path:
    """Write the model folder as one GGUF (tensors streamed one at a time); returns the path.

    `permute=False` leaves llama's q/k rows in transformers' order; it exists only so a test can show
    that the result is then wrong."""
    import gguf
    import torch

    folder = Path(model_dir)
    config = _read_json(folder / "config.json")
    arch = model_architecture(config, str(folder / "config.json"))
    weights = Weights(folder)
    dtype = resolve_dtype(dtype, weights)
    pre, tokens, types = vocabulary(folder, int(config["vocab_size"]))
    plan = tensor_plan(config, arch, weights, dtype)

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch=arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or folder.name)
    write_hparams(w, config, arch)
    w.add_file_type(FILE_TYPES[dtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    post = _read_json(folder / "tokenizer.json").get("post_processor") or {}
    if post.get("type") == "ByteLevel" or (post.get("type") == "TemplateProcessing" and not post.get("special_tokens")):
        for side in ("bos", "eos"):  # a post-processor that adds no token: say so rather than leave it to
            special.add_special_token.setdefault(side, False)  # llama.cpp's per-tokenizer default
    special.add_to_gguf(w, quiet=True)

    byte_type = {"F32": (np.float32, None), "F16": (np.float16, None), "BF16": (np.uint16, gguf.GGMLQuantizationType.BF16)}
    for gguf_name, _, shape, kind in plan:
        np_type, raw = byte_type[kind]
        w.add_tensor_info(gguf_name, shape, np.dtype(np_type), int(np.prod(shape)) * np.dtype(np_type).itemsize,
                          raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    for gguf_name, source, shape, kind in plan:
        if source is None:
            w.write_tensor_data(llama3_rope_factors(config))
            continue
        t = weights.get(source)
        if permute and arch in PERMUTES_QK and gguf_name.startswith("blk.") and \
                gguf_name.endswith(("attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias")):
            t = _permute(t, n_head if ".attn_q." in gguf_name else n_kv)
        if kind == "BF16":
            data = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
        else:  # straight to the target type (round to nearest even, as via float32): one copy, not two
            data = t.to(torch.float32 if kind == "F32" else torch.float16).contiguous().numpy()
        w.write_tensor_data(data)
        del t, data
    weights.close()
    w.close()
    tmp.replace(out_file)
    return out_file


# --- the student's GGUF, converted once and cached -------------------------------------------------

CACHE_NAME = "converted"  # $LITE_DELTA_CACHE/converted
CONVERT_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]


def local_model_folder(ref: str, *, download: bool = True) -> Path | None:
    """The folder of a local model or of a Hub model in the HF cache (downloaded if `download`)."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, allow_patterns=CONVERT_PATTERNS, local_files_only=not download))
    except Exception as exc:  # noqa: BLE001 - offline, gated or missing repos all end here
        if not download:
            return None
        raise LiteDeltaError(f"cannot fetch {ref} from the Hugging Face Hub to convert it: {exc}".splitlines()[0]) from None


def check_convertible(ref: str) -> str:
    """The GGUF architecture of a student (local folder or Hub id, from its config.json, read from the
    HF cache or fetched alone); LiteDeltaError if the converter does not handle it."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        return model_architecture(_read_json(folder / "config.json"), str(folder / "config.json"))
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(ref, "config.json")
    except Exception as exc:  # noqa: BLE001
        raise LiteDeltaError(f"cannot read {ref}'s config.json: {exc}".splitlines()[0]) from None
    return model_architecture(_read_json(Path(path)), f"{ref}/config.json")


def model_folder_identity(folder: Path) -> dict:
    """Identity of an HF model folder: its config, tokenizer and each weight file's size and head/tail hash."""
    import hashlib

    from lite_delta.models.refs import model_identity

    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and
                   (p.suffix in (".json", ".jinja", ".safetensors")))
    for p in files:
        digest.update(p.name.encode())
        if p.suffix == ".safetensors":
            digest.update(json.dumps(model_identity(p), sort_keys=True).encode())
        else:
            digest.update(p.read_bytes())
    return {"folder": str(folder), "files": len(files), "sha256": digest.hexdigest()}


def conversion_estimate(ref: str, dtype: str = "auto") -> dict:
    """For the dry run, without the network: {"architecture", "bytes", "seconds"}; None where the model's
    config or weights are not on this machine (a Hub model not yet in the cache)."""
    folder = local_model_folder(ref, download=False)
    if folder is None or not (folder / "config.json").is_file():
        return {"architecture": None, "bytes": None, "seconds": None}
    config = _read_json(folder / "config.json")
    arch = ARCHITECTURES.get(config.get("model_type"))
    try:
        weights = Weights(folder)
    except LiteDeltaError:
        return {"architecture": arch, "bytes": None, "seconds": None}
    width = {"f32": 4}.get(resolve_dtype(dtype, weights), 2) if dtype in DTYPES else 2
    tied = bool(config.get("tie_word_embeddings", False))
    total = 0
    for name in weights.where:
        if name == "lm_head.weight" and tied:
            continue
        shape = weights.shape(name)
        total += int(np.prod(shape)) * (4 if len(shape) <= 1 else width)
    if (folder / "tokenizer.json").is_file():
        total += (folder / "tokenizer.json").stat().st_size // 2  # tokens and merges: ~half the JSON
    return {"architecture": arch, "bytes": total, "seconds": total / CONVERT_BYTES_PER_S}


def cache_root() -> Path:
    return lite_delta_cache() / CACHE_NAME


def student_gguf(ref: str, *, dtype: str = "auto", cache_dir: str | Path | None = None) -> tuple[Path, dict]:
    """(GGUF of the student, its provenance): converted on the first call, reused from the cache
    ($LITE_DELTA_CACHE/converted) afterwards, keyed by the model's identity and the dtype."""
    folder = local_model_folder(ref)
    config = _read_json(folder / "config.json")
    model_architecture(config, f"{ref}: config.json")
    identity = model_folder_identity(folder)
    root = cache_folder(cache_dir, CACHE_NAME, "converted-model")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", ref.strip("/").split("/")[-1]) or "student"
    path = root / f"{stem}.{identity['sha256'][:16]}.{dtype}.gguf"
    record = path.with_name(path.name + ".json")
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}
    from lite_delta.models.refs import model_identity

    if path.is_file() and previous.get("source_identity") == identity \
            and previous.get("identity") == model_identity(path):
        return path, {**previous, "file": str(path), "reused": True}
    start = time.perf_counter()
    convert_hf_to_gguf(folder, path, dtype=dtype, name=ref.strip("/").split("/")[-1])
    provenance = {
        "converted_from": ref, "source_identity": identity, "dtype": dtype, "converter": "lite-delta hf_gguf",
        "seconds": round(time.perf_counter() - start, 1), "file": str(path), "identity": model_identity(path),
    }
    write_json(record, provenance)
    return path, {**provenance, "reused": False}
