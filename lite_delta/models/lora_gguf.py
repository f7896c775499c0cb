"""A PEFT LoRA adapter as a GGUF LoRA adapter that llama.cpp loads (`llama_adapter_lora_init`).

The file llama.cpp wants: `general.type` adapter, `adapter.type` lora, `adapter.lora.alpha`, the base's
`general.architecture`, and for every adapted weight `<gguf tensor name>.lora_a` ([r, in]) and
`.lora_b` ([out, r]), in PEFT's own orientation. llama.cpp scales them at run time by
`alpha / r`, r read from each tensor, so any other scale (rsLoRA's alpha/sqrt(r), per-module
alpha or rank patterns) is folded into lora_b. llama.cpp's HF converter stores a llama model's
q/k weights with their rows permuted (its rotary layout), so the rows of q/k lora_b are permuted
the same way; qwen2 and qwen3 have no such permutation (qwen3's q/k norms are not LoRA targets).
DoRA, `modules_to_save`, LoRA biases and embedding LoRA have no GGUF form and are refused. The
adapter names its base GGUF (general.base_model.*, and the file's name, size and identity).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lite_delta.errors import LiteDeltaError
from lite_delta.files import parse_json

# GGUF architecture -> whether llama.cpp's converter permutes the rows of attn_q / attn_k.
ARCHITECTURES = {"llama": True, "qwen2": False, "qwen3": False}
# transformers model_type -> the GGUF architecture llama.cpp converts it to.
HF_TO_GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
ADAPTER_DTYPES = ("f32", "f16", "bf16")

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])\.weight$")


@dataclass
class PeftLora:
    """A PEFT LoRA adapter folder read into memory: A [r, in] and B [out, r] per module, and its scale."""

    folder: Path
    config: dict
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]  # "model.layers.0.self_attn.q_proj" -> (A, B)
    scales: dict[str, float]  # the factor PEFT multiplies B @ A by

    @property
    def base_ref(self) -> str | None:
        return self.config.get("base_model_name_or_path")


@dataclass
class BaseGGUF:
    """What a LoRA export needs from the base GGUF: architecture, head counts and tensor shapes."""

    path: Path
    arch: str
    n_blocks: int
    n_head: int
    n_head_kv: int
    shapes: dict[str, tuple[int, ...]] = field(repr=False)  # numpy order: (out, in) for a matrix


def read_peft_lora(folder: str | Path) -> PeftLora:
    """Read and check a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)."""
    folder = Path(folder)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise LiteDeltaError(
            f"{folder} is not a PEFT adapter folder (no adapter_config.json): pass the adapter/ folder "
            "that `lite-delta train` wrote"
        )
    config = parse_json(config_file.read_bytes(), str(config_file))
    if not isinstance(config, dict):
        raise LiteDeltaError(f"{config_file} is not a JSON object: pass the adapter/ folder that `lite-delta train` wrote")
    _check_config_shape(config, config_file)
    if config.get("peft_type") != "LORA":
        raise LiteDeltaError(f"{config_file}: peft_type is {config.get('peft_type')!r}; only LoRA adapters export to GGUF")
    if config.get("use_dora"):
        raise LiteDeltaError(
            f"{folder} is a DoRA adapter (use_dora: true): llama.cpp's GGUF adapters cannot express DoRA's "
            "magnitude vectors; retrain with plain LoRA, or merge it in transformers"
        )
    if config.get("modules_to_save"):
        raise LiteDeltaError(
            f"{folder} saves whole modules ({', '.join(config['modules_to_save'])}, modules_to_save): a GGUF "
            "LoRA adapter holds only low-rank pairs; retrain without modules_to_save"
        )
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise LiteDeltaError(f"{folder} trains biases (bias/lora_bias): a GGUF LoRA adapter cannot hold them")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise LiteDeltaError(f"{folder} has no adapter_model.safetensors (save the adapter with safetensors)")
    from safetensors.torch import load_file

    try:
        tensors = {k: v.float().numpy() for k, v in load_file(weights).items()}
    except Exception as exc:  # noqa: BLE001 -- truncated, corrupt or not safetensors at all: safetensors' own errors
        raise LiteDeltaError(f"{weights} cannot be read as safetensors ({type(exc).__name__}: {str(exc)[:100]}): "
                             "is it truncated? Save the adapter again") from None
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise LiteDeltaError(
                f"{weights.name} holds {key}, which is not a LoRA A/B matrix of a linear layer "
                "(embedding LoRA, DoRA magnitudes and saved modules have no GGUF form)"
            )
        halves.setdefault(m["module"], {})[m["side"]] = value
    pairs = {}
    for module, ab in halves.items():
        if set(ab) != {"A", "B"} or ab["A"].ndim != 2 or ab["B"].ndim != 2 or ab["A"].shape[0] != ab["B"].shape[1]:
            raise LiteDeltaError(f"{weights.name}: {module} lacks a matching lora_A/lora_B pair")
        if ab["A"].shape[0] == 0:
            raise LiteDeltaError(f"{weights.name}: {module} has rank 0 (an empty LoRA pair): retrain with lora_r >= 1")
        if not (np.isfinite(ab["A"]).all() and np.isfinite(ab["B"]).all()):
            raise LiteDeltaError(f"{weights.name}: {module} holds NaN or infinite weights (training diverged): "
                                 "not exported; retrain with a lower learning rate")
        pairs[module] = (ab["A"], ab["B"])
    if not pairs:
        raise LiteDeltaError(f"{weights.name} holds no LoRA matrices")
    scales = {module: peft_scale(config, module, a.shape[0]) for module, (a, _) in pairs.items()}
    for module, (a, b) in pairs.items():  # a bound on every entry of scale * B @ A, in float64
        bound = abs(scales[module]) * float(np.abs(a).max()) * float(np.abs(b).max()) * a.shape[0]
        if not math.isfinite(bound) or bound > F32_MAX:
            raise LiteDeltaError(f"{config_file}: {module}'s update (scale {scales[module]:.3g} × B @ A) overflows "
                                 "float32: check lora_alpha and alpha_pattern")
    return PeftLora(folder=folder, config=config, pairs=pairs, scales=scales)


F32_MAX = float(np.finfo(np.float32).max)


def _check_config_shape(config: dict, config_file: Path) -> None:
    """The adapter_config.json fields export reads, each of the type PEFT writes; one clear error otherwise."""
    def bad(key: str, want: str):
        return LiteDeltaError(f"{config_file}: `{key}` should be {want}, got {config.get(key)!r:.60}")

    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise bad("lora_alpha", "a positive number")
    for key in ("modules_to_save", "target_modules"):
        value = config.get(key)
        if value is not None and not (isinstance(value, str) or
                                      (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise bad(key, "a list of module names")
    pattern = config.get("alpha_pattern")
    if pattern is not None and not (isinstance(pattern, dict) and all(
            isinstance(k, str) and not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            for k, v in pattern.items())):
        raise bad("alpha_pattern", "an object of module name -> number")
    for key in ("use_rslora", "use_dora"):
        if not isinstance(config.get(key) or False, bool):
            raise bad(key, "true or false")


def peft_scale(config: dict, module: str, rank: int) -> float:
    """The factor PEFT applies to B @ A for `module`: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_base_gguf(path: str | Path) -> BaseGGUF:
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise LiteDeltaError(f"cannot read {path} as a GGUF model: {exc}") from None

    def value(key: str, default=None):
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    if value("general.type", "model") != "model":
        raise LiteDeltaError(f"{path.name} is a GGUF {value('general.type')}, not a model: pass the base model's GGUF")
    if int(value("split.count", 0)) > 1:
        raise LiteDeltaError(
            f"{path.name} is one shard of a split GGUF: join it first (`llama-gguf-split --merge {path.name} "
            "whole.gguf`) and pass the whole file"
        )
    arch = value("general.architecture")
    if arch not in ARCHITECTURES:
        raise LiteDeltaError(
            f"{path.name} is a {arch} model: lite-delta exports LoRA adapters for the "
            f"{' and '.join(ARCHITECTURES)} architectures only"
        )
    n_head = int(value(f"{arch}.attention.head_count"))
    return BaseGGUF(
        path=path,
        arch=arch,
        n_blocks=int(value(f"{arch}.block_count")),
        n_head=n_head,
        n_head_kv=int(value(f"{arch}.attention.head_count_kv", n_head)),
        shapes={t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors},
    )


def permute_qk_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q/k matrix as llama.cpp's converter does: within each head, the two
    halves of the rotary dimensions are interleaved (rows 0, h/2, 1, h/2+1, ...)."""
    rows = b.shape[0]
    if rows % (2 * n_head):
        raise LiteDeltaError(f"{rows} rows cannot be split into {n_head} rotary heads")
    return b.reshape(n_head, 2, rows // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def gguf_lora_pairs(lora: PeftLora, base: BaseGGUF, *, permute: bool = True) -> tuple[float, dict]:
    """(alpha, {gguf tensor name: (A, B)}) with every PEFT scale expressed as llama.cpp's alpha / r.

    `permute=False` skips the llama q/k row permutation; it exists only so a test can show that
    an unpermuted adapter gives wrong outputs."""
    import gguf

    check_architecture(lora, base)
    arch_enum = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}[base.arch]
    names = gguf.get_tensor_name_map(arch_enum, base.n_blocks)
    first = next(iter(lora.pairs))
    alpha = lora.scales[first] * lora.pairs[first][0].shape[0]  # exact when every module shares r and scale
    out = {}
    for module, (a, b) in lora.pairs.items():
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise LiteDeltaError(f"the adapter adapts {module}, which has no {base.arch} GGUF tensor name")
        if name not in base.shapes:
            hint = " (its embeddings are tied: LoRA on lm_head cannot be exported)" if name == "output.weight" else ""
            raise LiteDeltaError(f"the adapter adapts {module} ({name}), a tensor {base.path.name} lacks{hint}")
        if base.shapes[name] != (b.shape[0], a.shape[1]):
            raise LiteDeltaError(
                f"the adapter's {module} is {b.shape[0]}x{a.shape[1]} but {base.path.name}'s {name} is "
                f"{'x'.join(map(str, base.shapes[name]))}: the adapter was trained on another base model"
            )
        rank = a.shape[0]
        fold = lora.scales[module] * rank / alpha
        b = b * np.float32(fold) if fold != 1.0 else b
        if permute and ARCHITECTURES[base.arch] and name.endswith(("attn_q.weight", "attn_k.weight")):
            b = permute_qk_rows(b, base.n_head if name.endswith("attn_q.weight") else base.n_head_kv)
        out[name] = (np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
    return float(alpha), out


def check_architecture(lora: PeftLora, base: BaseGGUF) -> None:
    """Refuse an adapter whose recorded base (a local folder with config.json) is another architecture."""
    ref = lora.base_ref
    if not ref or not (Path(ref) / "config.json").is_file():
        return  # a Hub id or a moved folder: the tensor names and shapes are checked instead
    model_type = json.loads((Path(ref) / "config.json").read_text(encoding="utf-8")).get("model_type")
    expected = HF_TO_GGUF_ARCH.get(model_type, model_type)
    if expected != base.arch:
        raise LiteDeltaError(
            f"the adapter in {lora.folder} was trained on a {model_type} model ({ref}) but "
            f"{base.path.name} is a {base.arch} model: pass the GGUF of the model the adapter was trained on"
        )


def write_lora_gguf(path: str | Path, arch: str, alpha: float, pairs: dict, *, dtype: str = "f32",
                    provenance: dict | None = None) -> Path:
    """Write {gguf name: (A, B)} as a GGUF LoRA adapter for `arch`; `provenance` (base_provenance) names the base."""
    import gguf

    if dtype not in ADAPTER_DTYPES:
        raise LiteDeltaError(f"adapter dtype must be one of {', '.join(ADAPTER_DTYPES)}, not {dtype!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch=arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    for key, value in (provenance or {}).items():
        w.add_uint64(key, value) if isinstance(value, int) else w.add_string(key, value)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16}[dtype]
    for name, (a, b) in pairs.items():
        for suffix, array in ((".lora_a", a), (".lora_b", b)):
            # as llama.cpp's converter does: a uint8 result (BF16) carries its byte shape, which the
            # writer turns back into the element shape itself (no raw_shape: that would be taken as bytes)
            w.add_tensor(name + suffix, gguf.quants.quantize(np.asarray(array, dtype=np.float32), qtype),
                         raw_dtype=qtype)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def base_provenance(base: BaseGGUF) -> dict:
    """general.base_model.* keys naming the base GGUF: its own name/organization/repo, and its file's
    name, size and lite-delta identity (sha256 of the first and last MiB, `refs.model_identity`)."""
    from gguf import GGUFReader, Keys

    from lite_delta.models.refs import model_identity

    fields = GGUFReader(str(base.path)).fields

    def value(key: str):
        f = fields.get(key)
        return f.contents() if f is not None else None

    identity = model_identity(base.path)
    out = {Keys.General.NAME: f"{value(Keys.General.NAME) or base.path.stem} LoRA adapter (lite-delta)",
           Keys.General.BASE_MODEL_COUNT: 1,
           Keys.General.BASE_MODEL_NAME.format(id=0): value(Keys.General.NAME) or base.path.stem}
    for ours, theirs in ((Keys.General.BASE_MODEL_ORGANIZATION, Keys.General.ORGANIZATION),
                         (Keys.General.BASE_MODEL_REPO_URL, Keys.General.REPO_URL),
                         (Keys.General.BASE_MODEL_URL, Keys.General.URL)):
        if value(theirs):
            out[ours.format(id=0)] = value(theirs)
    out.update({"lite_delta.base.file": identity["name"], "lite_delta.base.size": identity["size"],
                "lite_delta.base.sha256_head_tail": identity["sha256_head_tail"]})
    return out


def check_adapter_loads(base_gguf: str | Path, adapter_gguf: str | Path) -> None:
    """Load the adapter onto the base with llama.cpp itself; its refusal becomes a LiteDeltaError."""
    from lite_delta.inference.engine import GGUFModel

    model = GGUFModel(base_gguf, n_gpu_layers=0)
    try:
        model.load_adapter(adapter_gguf)
    finally:
        model.close()


def export_adapter(peft_dir: str | Path, base_gguf: str | Path, out_file: str | Path, *, dtype: str = "f32",
                   verify: bool = True) -> Path:
    """PEFT LoRA folder -> GGUF LoRA adapter for `base_gguf`; `verify` loads it with llama.cpp once and
    deletes the file if llama.cpp refuses it (no file is better than one that does not load)."""
    lora = read_peft_lora(peft_dir)
    base = read_base_gguf(base_gguf)
    alpha, pairs = gguf_lora_pairs(lora, base)
    path = write_lora_gguf(out_file, base.arch, alpha, pairs, dtype=dtype, provenance=base_provenance(base))
    if verify:
        try:
            check_adapter_loads(base.path, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return path
