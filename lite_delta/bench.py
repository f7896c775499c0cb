"""`lite-delta bench generate`: the batched engine against the sequential loop and, optionally, llama.cpp's
own llama-server (`--peer llama-server`), same prompts, one run.

Two workloads: `fixed` (greedy, a fixed number of new tokens, end tokens ignored: the bench's classic) and
`by_score` (the demo's: k samples per prompt at T 0.9, answers of varying length that stop on EOS). Engine
variants (`--variant share_prompts`, `live_rows`, `device_sampling`, ...) measure one lever each against the
default engine; `device_sampling` (llama.cpp's backend sampling) against host sampling also gets `device_over_host`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import platform
import time
from pathlib import Path

import llama_cpp

from lite_delta.errors import LiteDeltaError
from lite_delta.files import writable_file
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
from lite_delta.models.refs import resolve_model
from lite_delta.prompts import load_prompts

WORKLOADS = ("fixed", "by_score")
# a lever each, against the default batched engine; the last two reload the model with other settings
VARIANTS = ("share_prompts=0|1", "live_rows=0|1", "device_sampling=0|1", "extra_buffers=0|1")  # a bare name means =1


def describe_device(gpu: bool) -> str:
    from lite_delta.environment import cpu_name, nvidia_smi

    if gpu:
        smi = nvidia_smi()
        return f"GPU: {smi['name']}, {smi['driver']}" if smi else "GPU (llama.cpp offload build)"
    return f"CPU: {cpu_name()}, {default_threads()} cores available"


def _timed(engine, requests: list[Request], params: SamplingParams) -> tuple[float, int, dict[str, list[int]]]:
    started = time.perf_counter()
    outputs = {c.request.key: c.token_ids for c in engine.generate(requests, params)}
    seconds = time.perf_counter() - started
    return seconds, sum(len(t) for t in outputs.values()), outputs


def _variant(name: str) -> tuple[dict, str | None]:
    """BatchedEngine keyword arguments of a variant, and the LITE_DELTA_CPU_EXTRA_BUFFERS it loads with."""
    kwargs: dict = {}
    extra = None
    for part in name.split("+"):
        key, _, value = part.partition("=")
        if key in ("share_prompts", "live_rows", "device_sampling") and value in ("", "0", "1"):
            kwargs[key] = value != "0"
        elif key == "extra_buffers" and value in ("0", "1"):
            extra = value
        else:
            raise LiteDeltaError(f"unknown --variant {name!r}: combine with + any of {', '.join(VARIANTS)}")
    return kwargs, extra


@contextlib.contextmanager
def _extra_buffers(setting: str | None):
    old = os.environ.get("LITE_DELTA_CPU_EXTRA_BUFFERS")
    if setting is not None:
        os.environ["LITE_DELTA_CPU_EXTRA_BUFFERS"] = setting
    try:
        yield
    finally:
        if setting is not None:
            if old is None:
                os.environ.pop("LITE_DELTA_CPU_EXTRA_BUFFERS", None)
            else:
                os.environ["LITE_DELTA_CPU_EXTRA_BUFFERS"] = old


def workload_requests(
    model: GGUFModel, workload: str, n_prompts: int, max_tokens: int | None, samples: int
) -> tuple[list[Request], SamplingParams]:
    """The bench's requests: demo prompts (cycled), token ids rendered with the model's own template."""
    prompts, _ = load_prompts("builtin:demo", sample="first")
    chosen = list(itertools.islice(itertools.cycle(prompts), n_prompts))
    requests = []
    for i, prompt in enumerate(chosen):
        tokens = model.tokenize_prompt(model.render(list(prompt.messages)))
        if workload == "fixed":
            requests.append(Request(key=str(i), tokens=tokens, seed=i))
            continue
        for k in range(samples):  # the generate stage's order: a prompt's samples side by side
            digest = hashlib.sha256(f"0:{i}:{k}".encode()).digest()
            requests.append(Request(key=f"{i}-{k}", tokens=tokens, seed=int.from_bytes(digest[:4], "little") & 0x7FFFFFFF))
    if workload == "fixed":
        return requests, SamplingParams(temperature=0.0, max_tokens=max_tokens or 64, ignore_eos=True)
    return requests, SamplingParams(temperature=0.9, top_p=1.0, max_tokens=max_tokens or 200)


def bench_generate(
    model_ref: str,
    *,
    parallel: int = 32,
    n_prompts: int = 64,
    max_tokens: int | None = None,
    n_threads: int | None = None,
    out: Path | None = None,
    workload: str = "fixed",
    samples: int = 4,
    variants: list[str] | tuple[str, ...] = (),
    sequential: bool = True,
    peer: str | None = None,
    server_bin: Path | None = None,
) -> dict:
    """Tokens/s of each engine on the same requests, run one after the other in this order: batched, the
    peer server (right after it, so the headline ratio spans the least drift of a shared machine), each
    variant, sequential; ratios against the batched engine and output agreement."""
    from lite_delta.environment import environment

    if workload not in WORKLOADS:
        raise LiteDeltaError(f"unknown --workload {workload!r}: use {' or '.join(WORKLOADS)}")
    if peer not in (None, "llama-server"):
        raise LiteDeltaError(f"unknown --peer {peer!r}: the peer is llama-server")
    if peer and (server_bin is None or not Path(server_bin).is_file()):
        raise LiteDeltaError(
            f"--server-bin {server_bin or '(missing)'} is not a llama-server binary: build it with "
            "`bash benchmarks/llama_server/build.sh` (it prints the path)"
        )
    parsed = {name: _variant(name) for name in variants}  # refused before minutes of decoding
    if out is not None:
        writable_file(out, "--out")  # checked before minutes of decoding, not after
    path = resolve_model(model_ref)
    model = GGUFModel(path)
    requests, params = workload_requests(model, workload, n_prompts, max_tokens, samples)
    threads = n_threads or default_threads()
    n_ctx = max(len(r.tokens) for r in requests) + params.max_tokens

    runs: dict[str, dict] = {}
    outputs: dict[str, dict[str, list[int]]] = {}

    def record(name: str, seconds: float, tokens: int, result: dict[str, list[int]], **extra) -> None:
        runs[name] = {"seconds": round(seconds, 3), "completion_tokens": tokens,
                      "tok_s": round(tokens / seconds, 2), **extra}
        outputs[name] = result

    batched = BatchedEngine(model, slots=parallel, n_ctx_per_seq=n_ctx, n_threads=threads)
    record("batched", *_timed(batched, requests, params))
    slots = batched.slots
    batched.close()
    peer_info = None
    if peer:
        from lite_delta.bench_peer import free_port, llama_server, run_clients, server_args, server_version

        port = free_port()
        args = server_args(Path(server_bin), path, slots=slots, n_ctx_per_seq=round_up(n_ctx), threads=threads,
                           flash_attn=True, extra_buffers=model.extra_buffers, port=port)
        peer_info = {"name": "llama-server", "version": server_version(Path(server_bin)),
                     "args": [Path(a).name if i in (0, 2) else a for i, a in enumerate(args)], "clients": slots}
        with llama_server(args, port) as url:
            started = time.perf_counter()
            result = run_clients(url, requests, params, clients=slots)
            seconds = time.perf_counter() - started
        record("llama-server", seconds, sum(len(t) for t in result.values()), result)
    for name, (kwargs, extra) in parsed.items():
        with _extra_buffers(extra):
            vmodel = GGUFModel(path) if extra is not None else model
        engine = BatchedEngine(vmodel, slots=parallel, n_ctx_per_seq=n_ctx, n_threads=threads, **kwargs)
        record(name, *_timed(engine, requests, params), extra_buffers=vmodel.extra_buffers,
               **({"sampled_on_device": engine.sampling_on_device} if engine.device_sampling else {}))
        engine.close()
        if vmodel is not model:
            vmodel.close()
    if sequential:
        engine = SequentialEngine(model, n_ctx_per_seq=n_ctx, n_threads=threads)
        record("sequential", *_timed(engine, requests, params))
        engine.close()
    gpu = model.n_gpu_layers > 0 and gpu_offload_available()
    extra_buffers = model.extra_buffers
    model.close()

    base = runs["batched"]["tok_s"]
    result = {
        "benchmark": "generate",
        "workload": workload,
        "model": model_ref,
        "model_file": path.name,
        "device": describe_device(gpu),
        "gpu_offload": gpu,
        "n_threads": threads,
        "slots": slots,
        "prompts": n_prompts,
        "samples_per_prompt": samples if workload == "by_score" else 1,
        "sequences": len(requests),
        "max_tokens": params.max_tokens,
        "sampling": {"temperature": params.temperature, "top_p": params.top_p, "ignore_eos": params.ignore_eos},
        "cpu_extra_buffers": extra_buffers,
        "completion_tokens": runs["batched"]["completion_tokens"],
        "batched_seconds": runs["batched"]["seconds"],
        "batched_tok_s": base,
        "runs": runs,
        # tokens/s of the batched engine over each other run's (> 1: the batched engine is faster)
        "batched_over": {name: round(base / r["tok_s"], 3) for name, r in runs.items() if name != "batched"},
        # how many requests got exactly the batched engine's tokens (meaningful for greedy and for variants)
        "identical_to_batched": {
            name: sum(o.get(r.key) == outputs["batched"][r.key] for r in requests)
            for name, o in outputs.items() if name != "batched"
        },
        "peer": peer_info,
        "llama_cpp_python": llama_cpp.__version__,
        "python": platform.python_version(),
        "environment": environment(),
    }
    if sequential:  # the classic fields
        result.update(
            sequential_seconds=runs["sequential"]["seconds"],
            sequential_tok_s=runs["sequential"]["tok_s"],
            speedup=round(base / runs["sequential"]["tok_s"], 3),
            identical_outputs=result["identical_to_batched"]["sequential"],
        )
    if "device_sampling" in runs:  # > 1: sampling on the device is faster than on the host
        result["device_over_host"] = round(runs["device_sampling"]["tok_s"] / base, 3)
    if peer:
        result.update(peer_tok_s=runs["llama-server"]["tok_s"], batched_over_peer=result["batched_over"]["llama-server"])
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
