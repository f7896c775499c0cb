"""`lite-delta export`: a trained PEFT LoRA adapter -> files llama.cpp and Ollama run.

OUT/adapter.gguf (GGUF LoRA adapter for the base GGUF, `lora_gguf`), OUT/merged-f16.gguf and
OUT/merged-Q4_K_M.gguf (the adapter folded into the base, then quantized, `merge_gguf`), the base GGUF
itself (hard-linked, or copied across filesystems: every path is relative, so the folder can be moved
or shared), a Modelfile per model with the GGUF's own prompt format (`modelfile`) and a README.md with
the exact ollama / llama-cli / llama-server commands, and the base and tuned answers to one held-out
prompt through llama.cpp, all listed in OUT/export.json.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np

from lite_delta.errors import LiteDeltaError
from lite_delta.files import write_json, write_text
from lite_delta.models.lora_gguf import (
    BaseGGUF,
    PeftLora,
    export_adapter,
    gguf_lora_pairs,
    read_base_gguf,
    read_peft_lora,
)
from lite_delta.models.merge_gguf import check_quant, merge_to_gguf
from lite_delta.models.modelfile import modelfile_text, ollama_chat
from lite_delta.models.refs import model_identity, resolve_model

__all__ = ["export", "export_adapter", "merge_to_gguf", "write_handoff", "sample_answers", "check_same_base"]

log = logging.getLogger(__name__)

SAME_BASE_COSINE = 0.9  # a quant of the same weights scores > 0.95 even at 2-3 bits; unrelated weights ~0
DEFAULT_PROMPT = "How do I get better at public speaking?"  # from the demo's held-out prompts


def export(peft_dir: str | Path, base_ref: str, out_dir: str | Path, *, quant: str = "Q4_K_M", merge: bool = True,
           adapter_dtype: str = "f32", merged_dtype: str = "f16", prompt: str | None = DEFAULT_PROMPT,
           max_tokens: int = 96, name: str | None = None) -> dict:
    """Everything `lite-delta export` writes; saves what went where as OUT/export.json (file names,
    relative to OUT) and returns the same with absolute paths."""
    quant = check_quant(quant)
    source = resolve_model(base_ref)
    lora, base = read_peft_lora(peft_dir), read_base_gguf(source)
    gguf_lora_pairs(lora, base)  # names, shapes, architecture: fail before writing anything
    base_check = check_same_base(lora, base)
    out_dir = Path(out_dir)
    if out_dir.exists() and out_dir.resolve() == Path(peft_dir).resolve():  # its README.md is the adapter's card
        raise LiteDeltaError(f"--out {out_dir} is the adapter folder: export writes README.md and export.json, which "
                             "would replace the adapter's own; use another folder, e.g. --out export")
    out_dir.mkdir(parents=True, exist_ok=True)
    base_path, placed = place_base(source, out_dir)
    adapter = export_adapter(peft_dir, base_path, out_dir / "adapter.gguf", dtype=adapter_dtype)
    merged = merge_to_gguf(peft_dir, base_path, out_dir, quant=quant, dtype=merged_dtype) if merge else {}
    sample = None
    if prompt:
        sample = sample_answers(base_path, adapter, prompt, merged=merged.get("quantized"), max_tokens=max_tokens)
    readme = write_handoff(out_dir, base_path, adapter, merged.get("quantized"), sample=sample, name=name,
                           placed=placed)
    files = {"base": base_path, "adapter": adapter, "merged_unquantized": merged.get("unquantized"),
             "merged": merged.get("quantized"), "modelfile": out_dir / "Modelfile", "readme": readme}
    record = {key: path.name if path else None for key, path in files.items()}
    record.update({"base_placed": placed, "base_identity": model_identity(base_path), "architecture": base.arch,
                   "base_check": base_check, "quant": quant if merge else None, "sample": sample})
    write_json(out_dir / "export.json", record)
    return {**record, **{key: str(path.resolve()) if path else None for key, path in files.items()}}


def place_base(base_gguf: Path, out_dir: Path) -> tuple[Path, str]:
    """The base GGUF inside the export folder, so the Modelfile's FROM is relative: a hard link where
    base and folder share a filesystem (no extra space), else a copy. Returns (path, "hardlink" | "copy")."""
    name = base_gguf.name if not base_gguf.name.startswith(("adapter", "merged-")) else f"base-{base_gguf.name}"
    dest = out_dir / name
    if dest.exists() and dest.samefile(base_gguf):
        return dest, "hardlink" if dest.resolve() != base_gguf.resolve() else "in place"
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(base_gguf.resolve(), tmp)
        how = "hardlink"
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(base_gguf, tmp)
        how = "copy"
    tmp.replace(dest)
    return dest, how


def check_same_base(lora: PeftLora, base: BaseGGUF) -> str:
    """Say how we know the adapter's student is the base GGUF's model; raise if it is clearly not.

    A GGUF student's folder is named after the GGUF's identity (exact); otherwise the student's
    own weights, where they are on disk, are compared with the GGUF's (dequantized) v projections."""
    ref = lora.base_ref or ""
    digest = model_identity(base.path)["sha256_head_tail"][:12]
    if Path(ref).name == f"{base.path.stem}-{digest}":
        return f"exact: the adapter was trained on {base.path.name} itself"
    student = _student_tensors(ref, [f"model.layers.{i}.self_attn.v_proj.weight" for i in (0, base.n_blocks - 1)])
    if student is None:
        log.warning("cannot read the weights of the adapter's base model %s: checked names and shapes only", ref or "?")
        return f"shapes only: the weights of {ref or 'the adapter base'} are not on this machine"
    import gguf

    reader = gguf.GGUFReader(str(base.path))
    tensors = {t.name: t for t in reader.tensors}
    worst = 1.0
    for i, weight in zip((0, base.n_blocks - 1), student):
        t = tensors[f"blk.{i}.attn_v.weight"]
        ours = gguf.quants.dequantize(t.data, t.tensor_type).reshape(weight.shape).ravel()
        theirs = weight.ravel()
        worst = min(worst, float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs) + 1e-12)))
    if worst < SAME_BASE_COSINE:
        raise LiteDeltaError(
            f"{base.path.name} is not the model the adapter was trained on ({ref}): their weights differ "
            f"(cosine {worst:.2f}); pass the GGUF of that very model (recipe field student_gguf)"
        )
    return f"weights: {base.path.name} matches {ref} (cosine {worst:.4f})"


def _student_tensors(ref: str, names: list[str]) -> list[np.ndarray] | None:
    """Those tensors of a local model folder or a cached Hub model, or None where it is not on disk."""
    from safetensors import safe_open

    files = _safetensors_files(ref)
    if not files:
        return None
    found = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in set(names) & set(f.keys()):
                found[name] = f.get_tensor(name).float().numpy()
    return [found[n] for n in names] if all(n in found for n in names) else None


def _safetensors_files(ref: str) -> list[Path]:
    if not ref:
        return []
    folder = Path(ref)
    if folder.is_dir():
        return sorted(folder.glob("*.safetensors"))
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(ref, "model.safetensors.index.json")
    if isinstance(index, str):
        shards = set(json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values())
        paths = [try_to_load_from_cache(ref, s) for s in sorted(shards)]
        return [Path(p) for p in paths if isinstance(p, str)]
    single = try_to_load_from_cache(ref, "model.safetensors")
    return [Path(single)] if isinstance(single, str) else []


def sample_answers(base_gguf: str | Path, adapter_gguf: str | Path, prompt: str, *, merged: str | Path | None = None,
                   max_tokens: int = 96) -> dict:
    """Greedy answers of the base, base + adapter and (if given) the merged model to one prompt, via llama.cpp."""
    from lite_delta.inference.engine import BatchedEngine, GGUFModel, Request, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    answers = {"prompt": prompt}
    for label, path, adapter in (("base", base_gguf, None), ("tuned", base_gguf, adapter_gguf), ("merged", merged, None)):
        if path is None:
            continue
        model = GGUFModel(path)
        try:
            lora = model.load_adapter(adapter) if adapter is not None else None
            tokens = model.tokenize_prompt(model.render([{"role": "user", "content": prompt}]))
            engine = BatchedEngine(model, slots=1, n_ctx_per_seq=len(tokens) + max_tokens, adapter=lora)
            try:
                answers[label] = next(iter(engine.generate([Request("sample", tokens, seed=0)], params))).text
            finally:
                engine.close()
        finally:
            model.close()
    return answers


def write_handoff(export_dir: str | Path, base_gguf: str | Path, adapter_gguf: str | Path,
                  merged_gguf: str | Path | None = None, *, sample: dict | None = None, name: str | None = None,
                  placed: str = "hardlink") -> Path:
    """Modelfile (base + ADAPTER), Modelfile.merged and README.md with the commands; returns the README.

    The base, adapter and merged GGUFs are in `export_dir`: every path written is relative to it."""
    export_dir = Path(export_dir)
    base, adapter = Path(base_gguf), Path(adapter_gguf)
    for path in (base, adapter, *([Path(merged_gguf)] if merged_gguf else [])):
        if path.resolve().parent != export_dir.resolve():
            raise LiteDeltaError(f"{path} is not in the export folder {export_dir}: the Modelfile paths are relative")
    name = name or _ollama_name(export_dir.resolve().name)
    q = shlex.quote
    chat = ollama_chat(base)
    identity = model_identity(base)
    write_text(export_dir / "Modelfile", modelfile_text(f"./{base.name}", chat, adapter=f"./{adapter.name}"))
    lines = [
        f"# {name}: the tuned model, exported by lite-delta",
        "",
        f"Base model: `{base.name}` ({identity['size']} bytes, lite-delta identity sha256 of its first and last MiB "
        f"`{identity['sha256_head_tail']}`), {_PLACED.get(placed, 'in')} this folder.",
        "",
        f"- `{adapter.name}`: GGUF LoRA adapter for `{base.name}` (llama.cpp and Ollama apply it on the base at run "
        "time)",
        f"- `{base.name}`: the base model the adapter was trained on",
    ]
    if merged_gguf is not None:
        merged = Path(merged_gguf)
        write_text(export_dir / "Modelfile.merged", modelfile_text(f"./{merged.name}", chat))
        lines.append(f"- `{merged.name}`: the adapter merged into the base's weights, quantized by llama.cpp")
    lines += [
        "- `Modelfile`" + (", `Modelfile.merged`" if merged_gguf is not None else "") + ": for `ollama create`",
        "",
        "Every path is relative: run these from this folder (which can be moved or copied whole).",
        "",
        "## Ollama",
        "",
    ]
    if chat.template is not None:
        lines += [f"The Modelfiles carry the prompt format of the GGUF's chat template ({chat.layout}"
                  + (", with its default system prompt as SYSTEM" if chat.system else "")
                  + ") and its end-of-turn tokens as stop words.", ""]
    else:
        lines += [f"The Modelfiles carry no TEMPLATE: {chat.note}. Ollama then picks a prompt format itself; "
                  "check `ollama show --template` against the model's chat template.", ""]
    lines += [
        "```sh",
        f"ollama create {name} -f Modelfile",
        f"ollama run {name}",
    ]
    if merged_gguf is not None:
        lines += [f"ollama create {name}-merged -f Modelfile.merged", f"ollama run {name}-merged"]
    lines += [
        "```",
        "",
        "## llama.cpp",
        "",
        "```sh",
        f"llama-cli -m {q(base.name)} --lora {q(adapter.name)}",
        f"llama-server -m {q(base.name)} --lora {q(adapter.name)} --port 8080",
    ]
    if merged_gguf is not None:
        lines += [f"llama-cli -m {q(Path(merged_gguf).name)}", f"llama-server -m {q(Path(merged_gguf).name)} --port 8080"]
    lines += [
        "```",
        "",
        "llama-server speaks the OpenAI API:",
        "",
        "```sh",
        "curl http://localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\",
        "  -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'",
        "```",
        "",
        "## Python (llama-cpp-python)",
        "",
        "```python",
        "from llama_cpp import Llama",
        f"llm = Llama(model_path={base.name!r}, lora_path={adapter.name!r})",
        "print(llm.create_chat_completion([{\"role\": \"user\", \"content\": \"Hello!\"}])[\"choices\"][0][\"message\"][\"content\"])",
        "```",
    ]
    if sample:
        lines += ["", "## Quick check (greedy, llama.cpp)", "", f"**Prompt:** {sample['prompt']}", ""]
        for label in ("base", "tuned", "merged"):
            if label in sample:
                lines += [f"**{label}:**", "", *("> " + line for line in sample[label].splitlines() or [""]), ""]
    readme = export_dir / "README.md"
    write_text(readme, "\n".join(lines).rstrip() + "\n")
    return readme


_PLACED = {"hardlink": "hard-linked into", "copy": "copied into"}


def _ollama_name(folder: str) -> str:
    """Ollama model names: lowercase letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^a-z0-9._-]+", "-", folder.lower()).strip("-._") or "lite-delta-tuned"
