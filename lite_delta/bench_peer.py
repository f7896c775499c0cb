"""llama.cpp's own `llama-server` as the peer of `lite-delta bench generate`: same GGUF, same token-id prompts.

The benchmark starts the server on 127.0.0.1 with N slots (`-np N`, `-c` = N x the per-sequence context,
one KV stream per slot as the batched engine has, flash attention and threads as ours), sends every request
through its native `/completion` endpoint from N concurrent clients, and stops it. Token-id prompts avoid
any template difference; `ignore_eos` and `n_predict` give fixed lengths where the bench wants them.
Build the binary from the llama.cpp that llama-cpp-python vendors: `bash benchmarks/llama_server/build.sh`.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from lite_delta.errors import LiteDeltaError
from lite_delta.inference.engine import Request, SamplingParams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_args(
    server_bin: Path, model: Path, *, slots: int, n_ctx_per_seq: int, threads: int, flash_attn: bool,
    extra_buffers: bool, port: int,
) -> list[str]:
    """The llama-server command line matching the batched engine's settings (flags this build knows)."""
    help_text = subprocess.run([str(server_bin), "--help"], capture_output=True, text=True, timeout=60).stdout
    args = [
        str(server_bin), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
        "-np", str(slots), "-c", str(slots * n_ctx_per_seq), "-t", str(threads), "-tb", str(threads),
        "-b", "512", "-ub", "512", "-ngl", "0", "--cont-batching",
    ]
    args += ["-fa", "on" if flash_attn else "off"] if "[on|off|auto]" in help_text else (["-fa"] if flash_attn else [])
    if "--no-kv-unified" in help_text:
        args.append("--no-kv-unified")  # one KV stream per slot, as the batched engine
    if not extra_buffers and "--no-repack" in help_text:
        args.append("--no-repack")  # lite-delta loads without CPU extra buffers on this build
    if "--no-webui" in help_text:
        args.append("--no-webui")
    return args


@contextlib.contextmanager
def llama_server(args: list[str], port: int, *, startup_s: float = 600.0):
    """Run llama-server with ``args`` until the block ends; yield its base URL once /health answers 200."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode("utf-8", "replace")[-2000:]
                    raise LiteDeltaError(f"llama-server exited with code {proc.returncode} at start:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise LiteDeltaError(f"llama-server did not answer /health within {startup_s:.0f} s")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def server_version(server_bin: Path) -> str:
    out = subprocess.run([str(server_bin), "--version"], capture_output=True, text=True, timeout=60)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith(("version", "built"))]
    return "; ".join(lines)


def completion_body(request: Request, params: SamplingParams) -> dict:
    """A /completion request sampling as the batched engine does (same chain order, nothing else on)."""
    return {
        "prompt": request.tokens,
        "n_predict": params.max_tokens,
        "ignore_eos": params.ignore_eos,
        "temperature": params.temperature,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "samplers": ["top_k", "typ_p", "top_p", "min_p", "temperature"],
        "seed": request.seed,
        "cache_prompt": True,
        "return_tokens": True,
        "stream": False,
    }


def run_clients(url: str, requests: list[Request], params: SamplingParams, clients: int) -> dict[str, list[int]]:
    """Send every request from ``clients`` concurrent clients; the generated token ids per request key."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(base_url=url, timeout=httpx.Timeout(3600.0), limits=limits) as client:

        def one(request: Request) -> tuple[str, list[int]]:
            response = client.post("/completion", json=completion_body(request, params))
            if response.status_code != 200:
                raise LiteDeltaError(f"llama-server answered {response.status_code}: {response.text[:500]}")
            return request.key, list(response.json()["tokens"])

        with ThreadPoolExecutor(max_workers=clients) as pool:
            return dict(pool.map(one, requests))
