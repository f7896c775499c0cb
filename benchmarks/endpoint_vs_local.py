"""Generation through an OpenAI-compatible server vs the local batched engine: the same greedy prompts through
lite-delta's BatchedEngine (the GGUF loaded here) and through the endpoint client (lite_delta/inference/endpoint.py)
against llama-cpp-python's own server started here on 127.0.0.1 with the same GGUF and thread count. Prints and
writes JSON with tokens/s of both, their ratio, how many answers are identical, and the device.

llama-cpp-python's server decodes one request at a time (BRIEF §8): the ratio measures the client and that
server, not what llama-server -np N or vLLM reach with continuous batching.

    python benchmarks/endpoint_vs_local.py [--prompts 16] [--max-tokens 64] [--parallel 16] [--in-flight 4] [--rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lite_delta.bench import describe_device
from lite_delta.environment import cores, cpu_name, package_versions
from lite_delta.inference.endpoint import ChatRequest, EndpointPool
from lite_delta.inference.engine import BatchedEngine, GGUFModel, Request, SamplingParams, default_threads
from lite_delta.models.refs import DEMO_MODEL, resolve_model
from lite_delta.prompts import load_prompts

ALIAS = "bench-teacher"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", ALIAS, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads), "--n_threads_batch", str(threads),
         "--flash_attn", "true"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/v1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEMO_MODEL)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=16, help="slots of the local batched engine")
    ap.add_argument("--in-flight", type=int, default=4, help="requests in flight at the server")
    ap.add_argument("--rounds", type=int, default=2, help="local then endpoint, this many times; best of each")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of both (default: all cores)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    gguf = resolve_model(args.model)
    threads = args.threads or default_threads()
    rows, _ = load_prompts("builtin:demo", sample="first")
    chosen = list(itertools.islice(itertools.cycle(rows), args.prompts))
    work = Path(tempfile.mkdtemp(prefix="endpoint-bench-"))
    proc, url = start_server(gguf, threads, work / "server.log")
    rounds = []
    try:
        pool = EndpointPool([url], model=ALIAS, max_in_flight=args.in_flight, retries=30, backoff=0.5)
        pool.connect()  # waits (retried, counted) until the server answers; it idles while the local engine runs
        chat = [ChatRequest(str(i), list(p.messages), seed=i) for i, p in enumerate(chosen)]
        sampling = {"temperature": 0.0, "top_p": 1.0, "max_tokens": args.max_tokens,
                    "extra_body": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}}
        model = GGUFModel(gguf)
        requests = [Request(str(i), model.tokenize_prompt(model.render(list(p.messages))), seed=i)
                    for i, p in enumerate(chosen)]
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
        n_ctx = max(len(r.tokens) for r in requests) + args.max_tokens
        for _ in range(args.rounds):  # alternating, so a busy spell on a shared machine hits both
            engine = BatchedEngine(model, slots=args.parallel, n_ctx_per_seq=n_ctx, n_threads=threads)
            started = time.perf_counter()
            local = {c.request.key: c for c in engine.generate(requests, params)}
            local_s = time.perf_counter() - started
            engine.close()  # a fresh engine per round, as each generate stage run has
            started = time.perf_counter()
            served = {c.request.key: c for c in pool.generate(chat, sampling)}
            served_s = time.perf_counter() - started
            rounds.append({"local_s": round(local_s, 2), "endpoint_s": round(served_s, 2)})
            print(f"round {len(rounds)}: local {local_s:.1f} s, endpoint {served_s:.1f} s", flush=True)
        model.close()
    finally:
        proc.kill()
        proc.wait()

    local_s = min(r["local_s"] for r in rounds)
    served_s = min(r["endpoint_s"] for r in rounds)
    local_tokens = sum(len(c.token_ids) for c in local.values())
    served_tokens = sum(c.completion_tokens or 0 for c in served.values())
    result = {
        "benchmark": "endpoint_vs_local",
        "model": args.model,
        "model_file": gguf.name,
        "device": describe_device(False),
        "cpu": cpu_name(),
        "cores": cores(),
        "n_threads": threads,
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "rounds": rounds,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "local": {"engine": "BatchedEngine", "slots": args.parallel, "seconds": round(local_s, 2),
                  "completion_tokens": local_tokens, "tok_s": round(local_tokens / local_s, 1)},
        "endpoint": {"server": "python -m llama_cpp.server (one request at a time)", "in_flight": args.in_flight,
                     "seconds": round(served_s, 2), "completion_tokens": served_tokens,
                     "tok_s": round(served_tokens / served_s, 1), **pool.summary()},
        "identical_answers": sum(local[k].text == served[k].text for k in local),
        "packages": package_versions(("lite-delta", "llama_cpp_python", "openai", "fastapi", "uvicorn")),
        "python": platform.python_version(),
    }
    result["endpoint_over_local"] = round(result["endpoint"]["tok_s"] / result["local"]["tok_s"], 3)
    print(f"local batched engine: {local_tokens} tokens in {local_s:.1f} s = {result['local']['tok_s']} tok/s "
          f"({args.parallel} slots)")
    print(f"endpoint (llama_cpp.server, {args.in_flight} in flight): {served_tokens} tokens in {served_s:.1f} s = "
          f"{result['endpoint']['tok_s']} tok/s")
    print(f"endpoint / local: {result['endpoint_over_local']:.2f}x; identical answers "
          f"{result['identical_answers']}/{args.prompts}; {result['device']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
