"""Endpoint teachers against hostile servers: a real loopback HTTP server, started here, that answers the
OpenAI routes wrongly (malformed, implausible, endless). Nothing of a bad reply is stored, nothing hangs past
the request timeout, and the run ends with one line naming what was wrong (exit 2) — or, with a good server
beside the hostile one, finishes every answer there."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lite_delta.completions import read_completions
from lite_delta.config import GenerateConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.generate import generate
from lite_delta.inference.replies import MAX_REPLY_BYTES

MODEL = "hostile"


def chat(content="1. one\n2. two", finish="stop", usage=None, **extra) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15} if usage is None else usage,
            **extra}


# What the server answers to POST /chat/completions: raw bytes, or a callable that writes the reply itself.
REPLIES = {
    "not_json": b"<html>502 upstream</html>",
    "empty_object": b"{}",
    "no_choices": json.dumps({**chat(), "choices": []}).encode(),
    "json_list": b"[1, 2, 3]",
    "deep_nesting": b"[" * 100_000 + b"]" * 100_000,
    "huge_integer": b'{"choices": ' + b"9" * 5000 + b"}",
    "not_utf8": b'{"choices": "\xff\xfe"}',
    "lone_surrogate": json.dumps(chat(content="\ud800 list")).encode(),
    "content_not_string": json.dumps(chat(content=["a", "b"])).encode(),
    "finish_null": json.dumps(chat(finish=None)).encode(),
    "no_usage": json.dumps({k: v for k, v in chat().items() if k != "usage"}).encode(),
    "string_counts": json.dumps(chat(usage={"prompt_tokens": "9", "completion_tokens": "6"})).encode(),
    "negative_counts": json.dumps(chat(usage={"prompt_tokens": 9, "completion_tokens": -6})).encode(),
    "absurd_counts": json.dumps(chat(usage={"prompt_tokens": 10**30, "completion_tokens": 6})).encode(),
    "long_answer_few_tokens": json.dumps(chat(content="x" * 200_000,
                                              usage={"prompt_tokens": 9, "completion_tokens": 3})).encode(),
}


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    behaviour = "good"
    models: bytes = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
    posts = 0

    def log_message(self, *args):
        pass

    def send(self, body: bytes, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.endswith("/models"):
            self.send(self.models)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts += 1
        try:
            if self.behaviour in ("good", "slow"):
                time.sleep(1.0 if self.behaviour == "slow" else 0)
                self.send(json.dumps(chat()).encode())
            elif self.behaviour == "drip":  # a valid reply, one byte every 0.5 s: each read is quick
                body = json.dumps(chat()).encode()
                self.send(b"", length=len(body))
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.5)
            elif self.behaviour in ("gzip_bomb", "gzip_good", "brotli"):  # compressed though asked for none
                body = (b" " * (MAX_REPLY_BYTES + 1024 * 1024) + json.dumps(chat()).encode()
                        if self.behaviour == "gzip_bomb" else json.dumps(chat()).encode())
                packed = gzip.compress(body, compresslevel=9)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Encoding", "br" if self.behaviour == "brotli" else "gzip")
                self.send_header("Content-Length", str(len(packed)))
                self.end_headers()
                self.wfile.write(packed)
            elif self.behaviour == "huge_body":  # past the cap, announced honestly
                chunk = b" " * (1024 * 1024)
                self.send(b"", length=MAX_REPLY_BYTES + 4 * len(chunk))
                for _ in range(MAX_REPLY_BYTES // len(chunk) + 4):
                    self.wfile.write(chunk)
            else:
                self.send(REPLIES[self.behaviour])
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on us, as it should
            pass


@pytest.fixture
def serve():
    """serve(behaviour) -> base URL of a fresh hostile server; all are shut down after the test."""
    started = []

    def start(behaviour: str, models: bytes | None = None) -> str:
        handler = type(f"Hostile_{behaviour}", (Hostile,), {"behaviour": behaviour, "posts": 0,
                                                           **({"models": models} if models is not None else {})})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def _config(tmp_path, prompts, *urls, timeout=5.0) -> GenerateConfig:
    return GenerateConfig(endpoint={"endpoints": list(urls), "timeout": timeout, "retries": 1, "backoff": 0.05,
                                    "max_in_flight": 2},
                          prompts={"source": str(prompts)}, out=tmp_path / "out", generation={"max_tokens": 16})


def _bounded(fn, seconds: float):
    """Run fn in a thread; a hang fails the test instead of hanging the suite."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.parametrize("behaviour, says", [
    ("not_json", "not valid JSON"), ("empty_object", "no `choices`"), ("no_choices", "no `choices`"),
    ("json_list", "not an object"), ("deep_nesting", "nests JSON deeper"), ("huge_integer", "not valid JSON"),
    ("not_utf8", "not UTF-8"), ("lone_surrogate", "lone UTF-16 surrogate"),
    ("content_not_string", "`content` is list"), ("finish_null", "`finish_reason` is None"),
    ("no_usage", "no `usage`"), ("string_counts", "usage.prompt_tokens"), ("negative_counts", "usage.completion_tokens"),
    ("absurd_counts", "usage.prompt_tokens"),
    ("long_answer_few_tokens", "200,000 characters for 3 tokens"),
])
def test_bad_reply_stores_nothing_and_stops_with_the_reason(behaviour, says, tmp_path, serve, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", ["Name two rivers.", "List three colours."])
    cfg = _config(tmp_path, prompts, serve(behaviour))
    with pytest.raises(LiteDeltaError) as info:
        _bounded(lambda: generate(cfg, progress=False), 60)
    assert says in str(info.value) and "rerun" in str(info.value)  # the reason, and what to do next
    assert read_completions(tmp_path / "out") == []
    manifest = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["completed"] == 0


def test_a_good_server_beside_a_hostile_one_does_all_the_work(tmp_path, serve, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Give me {k} tips." for k in range(6)])
    bad, good = serve("no_usage"), serve("good")
    out = _bounded(lambda: generate(_config(tmp_path, prompts, bad, good), progress=False), 60)
    records = read_completions(out)
    assert sorted(r["index"] for r in records) == list(range(6))
    assert {r["endpoint"] for r in records} == {good}
    summary = json.loads((out / "generation.json").read_text())["invocations"][-1]
    down = {e["url"]: e for e in summary["endpoints"]}[bad]
    assert down["down"] and down["errors"] == {"bad_reply": down["retries"]} and down["completed"] == 0


@pytest.mark.parametrize("behaviour, says", [("drip", "no complete reply within 2 s"), ("huge_body", "larger than 16 MiB"),
                                             ("gzip_bomb", "larger than 16 MiB"), ("brotli", "'br'-encoded")])
def test_endless_replies_are_cut_off(behaviour, says, tmp_path, serve, write_prompts):
    """httpx's timeout is per read: a server dripping a byte every 0.5 s never trips it. The whole exchange is
    bounded by the request timeout, and a body by MAX_REPLY_BYTES."""
    prompts = write_prompts(tmp_path / "p.jsonl", ["Name two rivers."])
    cfg = _config(tmp_path, prompts, serve(behaviour), timeout=2.0)
    started = time.monotonic()
    with pytest.raises(LiteDeltaError, match=says):
        _bounded(lambda: generate(cfg, progress=False), 60)
    assert time.monotonic() - started < 30 and read_completions(tmp_path / "out") == []


@pytest.mark.parametrize("models", [b"[]", b"null", b'{"data": [{"name": "x"}]}', b"not json", b'{"data": {}}',
                                    b'{"data": [{"id": "\\udc00"}]}'])
def test_malformed_model_list_is_one_clear_line(models, tmp_path, serve, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", ["Name two rivers."])
    cfg = _config(tmp_path, prompts, serve("good", models=models))
    with pytest.raises(LiteDeltaError, match=r"no endpoint could be reached: .*GET /models (did not return|is not valid JSON|holds a lone)"):
        _bounded(lambda: generate(cfg, progress=False), 60)


def test_cli_against_a_hostile_server_exits_2_with_one_line(tmp_path, serve, write_prompts):
    """The real command in its own process: no traceback, no hang, nothing stored."""
    prompts = write_prompts(tmp_path / "p.jsonl", ["Name two rivers."])
    url = serve("not_json")
    run = subprocess.run([sys.executable, "-m", "lite_delta", "generate", "--prompts", str(prompts),
                          "--out", str(tmp_path / "out"), "--endpoint", url, "--retries", "1", "--backoff", "0.05",
                          "--request-timeout", "5"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "not valid JSON" in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.startswith("error")]) == 1
    assert read_completions(tmp_path / "out") == []


def test_two_processes_on_one_out_folder(tmp_path, serve, write_prompts):
    """The second `generate` on a folder in use exits 2 naming the first; the first finishes every key once."""
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Give me {k} tips." for k in range(4)])
    url, out = serve("slow"), tmp_path / "out"
    args = [sys.executable, "-m", "lite_delta", "generate", "--prompts", str(prompts), "--out", str(out),
            "--endpoint", url, "--max-in-flight", "1"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "completions.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert second.returncode == 2 and f"in use by another lite-delta process (pid {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    keys = [r["key"] for r in read_completions(out)]
    assert len(keys) == len(set(keys)) == 4


def test_a_gzip_reply_from_a_server_that_compresses_anyway_is_read(tmp_path, serve, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", ["Name two rivers.", "List three colours."])
    out = _bounded(lambda: generate(_config(tmp_path, prompts, serve("gzip_good")), progress=False), 60)
    assert [r["completion"] for r in read_completions(out)] == ["1. one\n2. two"] * 2
