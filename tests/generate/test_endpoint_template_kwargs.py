"""chat_template_kwargs to an endpoint teacher: sent in the request body (as llama-server and vLLM read it), keyed,
and a thinking answer's <think> block kept out of the pairs. The server is a real loopback HTTP server that acts as
a Qwen3 server does: it thinks unless the request says enable_thinking false."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lite_delta.completions import read_completions
from lite_delta.config import GenerateConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.generate import generate
from lite_delta.pairs import PairConfig, make_pairs


class QwenLike(BaseHTTPRequestHandler):
    bodies: list[dict] = []
    answer = "**Answer**\n\nIt is 4."

    def log_message(self, *args):
        pass

    def reply(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.endswith("/models"):
            self.reply(200, {"object": "list", "data": [{"id": "qwen3-like", "object": "model"}]})
        else:
            self.reply(404, {"error": {"message": "not found"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking", True)
        text = ("<think>\nThe user asks a sum.\n</think>\n\n" if thinking else "") + self.answer
        self.reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}})


@pytest.fixture
def server():
    QwenLike.bodies = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), QwenLike)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _cfg(url, prompts, out, kwargs, extra_body=None):
    return GenerateConfig(endpoint=dict(endpoints=[url], backoff=0.01, retries=0, extra_body=extra_body or {}),
                          prompts=dict(source=str(prompts)), out=out,
                          generation=dict(max_tokens=32, chat_template_kwargs=kwargs))


def test_request_carries_chat_template_kwargs_and_keys_change(tmp_path, server, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", ["What is 2+2?", "And 3+3?"])
    plain = read_completions(generate(_cfg(server, prompts, tmp_path / "plain", {}), progress=False))
    assert all("chat_template_kwargs" not in b.get("extra_body", b) for b in QwenLike.bodies)
    assert all(r["completion"].startswith("<think>") for r in plain)

    QwenLike.bodies.clear()
    off = read_completions(generate(_cfg(server, prompts, tmp_path / "off", {"enable_thinking": False}),
                                    progress=False))
    assert len(QwenLike.bodies) == 2
    assert all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in QwenLike.bodies)
    assert all(r["completion"] == QwenLike.answer for r in off)
    assert {r["key"] for r in off}.isdisjoint(r["key"] for r in plain)
    manifest = json.loads((tmp_path / "off" / "generation.json").read_text())
    assert manifest["request_sampling"]["extra_body"]["chat_template_kwargs"] == {"enable_thinking": False}

    with pytest.raises(LiteDeltaError, match="other settings"):  # the kwargs changed: not mixed into that folder
        generate(_cfg(server, prompts, tmp_path / "off", {"enable_thinking": True}), progress=False)

    # A teacher's own extra_body.chat_template_kwargs win over generation's (a per-teacher override).
    QwenLike.bodies.clear()
    generate(_cfg(server, prompts, tmp_path / "own", {"enable_thinking": False, "a": 1},
                  extra_body={"chat_template_kwargs": {"enable_thinking": True}}), progress=False)
    assert all(b["chat_template_kwargs"] == {"enable_thinking": True, "a": 1} for b in QwenLike.bodies)


def test_pairs_never_hold_a_think_block_unless_kept(tmp_path, server, write_prompts):
    """A thinking teacher (kwargs unset) against a plain one: pairing takes the <think> block out by default."""
    prompts = write_prompts(tmp_path / "p.jsonl", ["What is 2+2?", "And 3+3?"])
    chosen = generate(_cfg(server, prompts, tmp_path / "chosen", {}), progress=False)
    QwenLike.answer = "4"
    try:
        rejected = generate(_cfg(server, prompts, tmp_path / "rejected", {"enable_thinking": False}),
                            progress=False)
    finally:
        QwenLike.answer = "**Answer**\n\nIt is 4."
    out = make_pairs(PairConfig(mode="by_model", chosen=chosen, rejected=rejected, out=tmp_path / "pairs"))
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert all(row["chosen"][0]["content"] == "**Answer**\n\nIt is 4." for row in rows)
    assert all(row["chosen_score"] == 1 for row in rows)  # scored without the thinking too
    stats = json.loads((out / "stats.json").read_text())
    assert stats["thinking_stripped"] == {"chosen": 2, "rejected": 0}

    kept = make_pairs(PairConfig(mode="by_model", chosen=chosen, rejected=rejected, keep_thinking=True,
                                 out=tmp_path / "pairs-kept"))
    rows = [json.loads(line) for line in (kept / "pairs.jsonl").read_text().splitlines()]
    assert all(row["chosen"][0]["content"].startswith("<think>\nThe user asks") for row in rows)
    assert "thinking_stripped" not in json.loads((kept / "stats.json").read_text())
