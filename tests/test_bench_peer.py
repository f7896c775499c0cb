"""`lite-delta bench generate --peer llama-server`: the server's command line, its requests, its lifecycle.

The real llama-server is built by benchmarks/llama_server/build.sh, which CI does not run; here a small
stand-in speaks the same two endpoints (/health, /completion) so the client side is tested for real.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from lite_delta.bench_peer import completion_body, free_port, llama_server, run_clients, server_args
from lite_delta.cli import main
from lite_delta.errors import LiteDeltaError
from lite_delta.inference.engine import Request, SamplingParams

HELP = """\
-fa,   --flash-attn [on|off|auto]       set Flash Attention use ('on', 'off', or 'auto', default: 'auto')
-kvu,  --kv-unified, -no-kvu, --no-kv-unified
-nr,   --no-repack                      disable weight repacking
--webui, --no-webui
"""


@pytest.fixture()
def fake_bin(tmp_path):
    path = tmp_path / "llama-server"
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{HELP}EOF\n")
    path.chmod(0o755)
    return path


def test_server_args_match_the_engine(tmp_path, fake_bin):
    model = tmp_path / "m.gguf"
    args = server_args(fake_bin, model, slots=32, n_ctx_per_seq=512, threads=2, flash_attn=True,
                       extra_buffers=False, port=8099)
    joined = " ".join(args)
    for part in ("-np 32", f"-c {32 * 512}", "-t 2", "-tb 2", "-fa on", "--host 127.0.0.1", "--port 8099",
                 "--no-kv-unified", "--no-repack", "-ngl 0", f"-m {model}"):
        assert part in joined
    with_repack = server_args(fake_bin, model, slots=4, n_ctx_per_seq=256, threads=1, flash_attn=False,
                              extra_buffers=True, port=8099)
    assert "--no-repack" not in with_repack and "-fa off" in " ".join(with_repack)


def test_completion_body_samples_as_the_engine():
    body = completion_body(Request("a", [1, 2, 3], seed=7), SamplingParams(temperature=0.9, top_p=0.95, max_tokens=20))
    assert body["prompt"] == [1, 2, 3] and body["seed"] == 7 and body["n_predict"] == 20
    assert body["samplers"] == ["top_k", "typ_p", "top_p", "min_p", "temperature"]
    assert (body["top_k"], body["top_p"], body["min_p"], body["typical_p"], body["repeat_penalty"]) == (0, 0.95, 0.0, 1.0, 1.0)
    assert body["ignore_eos"] is False and body["return_tokens"] is True
    assert completion_body(Request("b", [4], 0), SamplingParams(max_tokens=3, ignore_eos=True))["ignore_eos"] is True


STAND_IN = textwrap.dedent("""\
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, payload):
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.reply(200 if self.path == "/health" else 404, {"status": "ok"})

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if req["prompt"] == [666]:
                return self.reply(500, {"error": "boom"})
            self.reply(200, {"tokens": [req["prompt"][-1] + i for i in range(req["n_predict"])]})

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Handler).serve_forever()
""")


def test_server_lifecycle_and_concurrent_clients(tmp_path):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    port = free_port()
    requests = [Request(str(i), [10 * i], seed=i) for i in range(5)]
    with llama_server([sys.executable, str(script), "--port", str(port)], port, startup_s=60) as url:
        out = run_clients(url, requests, SamplingParams(max_tokens=3, ignore_eos=True), clients=3)
        assert out == {str(i): [10 * i, 10 * i + 1, 10 * i + 2] for i in range(5)}
        with pytest.raises(LiteDeltaError, match="500"):
            run_clients(url, [Request("x", [666], 0)], SamplingParams(max_tokens=1), clients=1)
    with pytest.raises(LiteDeltaError, match="exited with code"):
        with llama_server([sys.executable, "-c", "raise SystemExit(3)"], free_port(), startup_s=60):
            pass


@pytest.mark.parametrize(
    "extra, message",
    [(["--peer", "llama-server"], "--server-bin"), (["--peer", "vllm"], "--peer"), (["--workload", "nope"], "--workload"),
     (["--variant", "turbo"], "--variant")],
)
def test_bench_refuses_bad_settings_before_loading(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        main(["bench", "generate", "--model", str(tmp_path / "absent.gguf"), *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
