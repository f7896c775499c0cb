"""`lite-delta bench generate`: the batched engine against the sequential loop, same prompts, one run."""

from __future__ import annotations

import itertools
import json
import platform
import time
from pathlib import Path

import llama_cpp

from lite_delta.files import writable_file
from lite_delta.inference.engine import (
    BatchedEngine,
    GGUFModel,
    Request,
    SamplingParams,
    SequentialEngine,
    default_threads,
    gpu_offload_available,
)
from lite_delta.models.refs import resolve_model
from lite_delta.prompts import load_prompts


def describe_device(gpu: bool) -> str:
    from lite_delta.environment import cpu_name, nvidia_smi

    if gpu:
        smi = nvidia_smi()
        return f"GPU: {smi['name']}, {smi['driver']}" if smi else "GPU (llama.cpp offload build)"
    return f"CPU: {cpu_name()}, {default_threads()} cores available"


def _timed(engine, requests: list[Request], params: SamplingParams) -> tuple[float, int, list[list[int]]]:
    started = time.perf_counter()
    outputs = {c.request.key: c.token_ids for c in engine.generate(requests, params)}
    seconds = time.perf_counter() - started
    return seconds, sum(len(t) for t in outputs.values()), [outputs[r.key] for r in requests]


def bench_generate(
    model_ref: str,
    *,
    parallel: int = 32,
    n_prompts: int = 64,
    max_tokens: int = 64,
    n_threads: int | None = None,
    out: Path | None = None,
) -> dict:
    """Tokens/s of both engines on the same greedy, fixed-length requests (end tokens ignored)."""
    if out is not None:
        writable_file(out, "--out")  # checked before minutes of decoding, not after
    path = resolve_model(model_ref)
    model = GGUFModel(path)
    prompts, _ = load_prompts("builtin:demo", sample="first")
    chosen = list(itertools.islice(itertools.cycle(prompts), n_prompts))
    requests = []
    for i, prompt in enumerate(chosen):
        tokens = model.tokenize_prompt(model.render(list(prompt.messages)))
        requests.append(Request(key=str(i), tokens=tokens, seed=i))
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    threads = n_threads or default_threads()
    n_ctx = max(len(r.tokens) for r in requests) + max_tokens

    batched = BatchedEngine(model, slots=parallel, n_ctx_per_seq=n_ctx, n_threads=threads)
    b_seconds, b_tokens, b_out = _timed(batched, requests, params)
    slots = batched.slots
    batched.close()
    sequential = SequentialEngine(model, n_ctx_per_seq=n_ctx, n_threads=threads)
    s_seconds, s_tokens, s_out = _timed(sequential, requests, params)
    sequential.close()
    gpu = model.n_gpu_layers > 0 and gpu_offload_available()
    model.close()

    result = {
        "benchmark": "generate",
        "model": model_ref,
        "model_file": path.name,
        "device": describe_device(gpu),
        "gpu_offload": gpu,
        "n_threads": threads,
        "slots": slots,
        "prompts": n_prompts,
        "max_tokens": max_tokens,
        "completion_tokens": b_tokens,
        "batched_seconds": round(b_seconds, 3),
        "sequential_seconds": round(s_seconds, 3),
        "batched_tok_s": round(b_tokens / b_seconds, 2),
        "sequential_tok_s": round(s_tokens / s_seconds, 2),
        "speedup": round((b_tokens / b_seconds) / (s_tokens / s_seconds), 3),
        "identical_outputs": sum(a == b for a, b in zip(b_out, s_out)),
        "llama_cpp_python": llama_cpp.__version__,
        "python": platform.python_version(),
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
