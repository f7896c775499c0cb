"""The generate stage: one GGUF model answers a prompt set, resumably, into completions.jsonl."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import llama_cpp
from rich.console import Console

from lite_delta.config import GenerateConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.files import writable_dir, write_json
from lite_delta.inference.engine import (
    BatchedEngine,
    GGUFModel,
    Request,
    SamplingParams,
    SequentialEngine,
    default_threads,
    gpu_offload_available,
    round_up,
)
from lite_delta.inference.template import control_text_in
from lite_delta.completions import COMPLETIONS_FILE, CompletionStore, completion_key, template_kwargs_part
from lite_delta.models.derive import derive_gguf
from lite_delta.models.refs import model_identity, resolve_model
from lite_delta.progress import progress_bar
from lite_delta.prompts import load_prompts, prompt_share

MANIFEST_FILE = "generation.json"
console = Console(stderr=True)


def item_seed(seed: int, prompt_id: str, sample: int) -> int:
    """A seed per (prompt, sample): the same answer whatever else is in the batch or the run."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF  # 0xFFFFFFFF would mean "random" to llama.cpp


def _previous_invocations(path: Path) -> list[dict]:
    """Throughput of earlier (interrupted or finished) runs into the same directory, kept across resumes."""
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("invocations", []))
    except (OSError, ValueError, AttributeError):
        return []


def generate(cfg: GenerateConfig, *, progress: bool = True) -> Path:
    """Answer every prompt ``samples_per_prompt`` times; resume from what ``out`` already holds."""
    if cfg.endpoint is not None:  # OpenAI-compatible servers instead of a GGUF (generate/remote.py)
        from lite_delta.generate.remote import generate_from_endpoints

        return generate_from_endpoints(cfg, progress=progress)
    g = cfg.generation
    out = writable_dir(cfg.out, "--out")
    prompts, prompt_stats = load_prompts(
        cfg.prompts.source,
        column=cfg.prompts.column,
        split=cfg.prompts.split,
        config=cfg.prompts.config,
        n=cfg.prompts.n,
        sample=cfg.prompts.sample,
        seed=cfg.prompts.seed,
    )
    if cfg.share is not None:  # an on-policy round answers its own share of the prompts
        prompts = prompt_share(prompts, *cfg.share, seed=cfg.prompts.seed)
        prompt_stats = {**prompt_stats, "share": list(cfg.share), "selected": len(prompts)}
    path, derived = resolve_model(cfg.model), None
    if cfg.derive:  # a rejected teacher made from this GGUF: requantized once, cached (models/derive.py)
        path, derived = derive_gguf(cfg.model, cfg.derive)
    model_label = f"{cfg.model} derived {derived['quant']}" if derived else cfg.model
    model = GGUFModel(path, n_gpu_layers=g.n_gpu_layers, chat_template=cfg.chat_template,
                      chat_template_kwargs=g.chat_template_kwargs)
    identity = model_identity(path)
    adapter = None
    if cfg.adapter is not None:  # the student tuned so far: its answers are keyed by the adapter too
        try:
            adapter = model.load_adapter(cfg.adapter)
        except LiteDeltaError:
            model.close()
            raise
        identity = {**identity, "adapter": model_identity(cfg.adapter)}
        model_label = f"{model_label} + {Path(cfg.adapter).name}"
    params = SamplingParams(
        temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, max_tokens=g.max_tokens, stop=tuple(g.stop)
    )

    sampling = asdict(params)
    if g.device_sampling and g.temperature > 0:  # sampled tokens can differ from host sampling's: never mixed
        sampling["device_sampling"] = True
    requests: list[Request] = []
    over_budget = with_control_text = 0
    longest = 0
    for prompt in prompts:
        if control_text_in(prompt.messages, model.control_texts):  # would forge a turn: dropped, counted
            with_control_text += 1
            continue
        rendered = model.render(list(prompt.messages), g.system)
        tokens = model.tokenize_prompt(rendered)
        if len(tokens) > cfg.prompts.max_prompt_tokens:
            over_budget += 1
            continue
        longest = max(longest, len(tokens))
        for k in range(g.samples_per_prompt):
            seed = item_seed(g.seed, prompt.prompt_id, k)
            key = completion_key(model=identity, template=model.chat_template, prompt=rendered, sampling=sampling,
                                 seed=seed, **template_kwargs_part(g.chat_template_kwargs))
            requests.append(Request(key, tokens, seed, payload=(prompt, k)))

    store = CompletionStore(out / COMPLETIONS_FILE)
    try:
        store.refuse_others({r.key for r in requests})
    except LiteDeltaError:
        model.close()
        raise
    todo = [r for r in requests if r.key not in store]
    n_ctx_per_seq = min(round_up(longest + g.max_tokens), round_up(model.n_ctx_train)) if requests else 256
    threads = g.n_threads or default_threads()
    manifest = {
        "stage": "generate",
        "status": "running",
        "model": model_label,
        "model_file": str(path),
        "model_identity": identity,
        **({"adapter": str(cfg.adapter)} if cfg.adapter is not None else {}),
        **({"derived": derived} if derived else {}),
        "chat_template": model.chat_template,
        "system": g.system,
        "prompts": cfg.prompts.model_dump(),
        "prompt_stats": {**prompt_stats, "over_budget": over_budget, "control_text": with_control_text},
        "generation": g.model_dump(),
        "requests": len(requests),
        "already_done": len(requests) - len(todo),
        "engine": g.engine,
        "n_ctx_per_seq": n_ctx_per_seq,
        "n_threads": threads,
        "gpu_offload": model.n_gpu_layers > 0 and gpu_offload_available(),
        "llama_cpp_python": llama_cpp.__version__,
        "invocations": _previous_invocations(out / MANIFEST_FILE),
    }
    write_json(out / MANIFEST_FILE, manifest)
    if with_control_text:
        console.print(f"[yellow]note[/yellow]: {with_control_text} prompt(s) hold the text of one of the model's "
                      "control tokens (e.g. <|im_end|>), which would forge a turn: left out (prompt_stats.control_text)")

    engine = None
    new_tokens = 0
    started = time.perf_counter()
    try:
        if todo:
            if g.engine == "batched":
                engine = BatchedEngine(model, slots=g.parallel, n_ctx_per_seq=n_ctx_per_seq, n_threads=threads,
                                       device_sampling=g.device_sampling, adapter=adapter)
            else:
                engine = SequentialEngine(model, n_ctx_per_seq=n_ctx_per_seq, n_threads=threads, adapter=adapter)
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task(f"generate {path.name}", total=len(requests), completed=len(requests) - len(todo), rate="")
            for done in (engine.generate(todo, params) if engine else ()):
                prompt, k = done.request.payload
                store.append(
                    {
                        "key": done.request.key,
                        "prompt_id": prompt.prompt_id,
                        "index": prompt.index,
                        "sample": k,
                        "messages": list(prompt.messages),
                        "completion": done.text,
                        "finish_reason": done.finish_reason,
                        "prompt_tokens": len(done.request.tokens),
                        "completion_tokens": len(done.token_ids),
                        "model": model_label,
                        "seed": done.request.seed,
                    }
                )
                new_tokens += len(done.token_ids)
                elapsed = time.perf_counter() - started
                bar.update(task, advance=1, rate=f"{new_tokens / elapsed:,.0f} tok/s")
    finally:
        store.close()
        if engine is not None:
            engine.close()
        model.close()
    seconds = time.perf_counter() - started
    manifest.update(status="complete", completed=len(store))
    manifest["invocations"].append(
        {
            "new_completions": len(todo),
            "new_tokens": new_tokens,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(new_tokens / seconds, 1) if todo and seconds > 0 else None,
            "slots": engine.slots if engine else None,
        }
    )
    write_json(out / MANIFEST_FILE, manifest)
    return out
