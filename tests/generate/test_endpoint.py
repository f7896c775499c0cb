"""Endpoint teachers against a real OpenAI-compatible server: llama-cpp-python's own (`python -m llama_cpp.server`)
on 127.0.0.1 with the SmolLM2 GGUF, started and stopped here. Two instances for the fan-out; one more per
kill test. Greedy answers equal the local batched engine's: that server renders the GGUF's own template
(SmolLM2's is not one it maps to a built-in format) with the same Jinja settings, and we send min_p 0 and
repeat penalty 1 (its defaults are 0.05 and 1.1)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lite_delta.cli import main
from lite_delta.completions import read_completions
from lite_delta.config import GenerateConfig
from lite_delta.generate import generate

PROMPTS = ["Give me 3 tips for learning to cook.", "Name two rivers in Europe.", "What is 2+2?",
           "Write one sentence about the sea.", "List three colours.", "How do birds fly?"]
KILL_PROMPTS = [f"Give me {k} tips for learning to {skill}." for k in (2, 3) for skill in ("cook", "swim", "draw")]
ALIAS = "smollm2-q4_1"
SERVER_CTX = 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `python -m llama_cpp.server`, loading its model as this project's engines do: without llama.cpp's CPU "extra"
# weight buffers where an AMX build runs on a CPU with AMX, whose kernels segfault there at the first decode
# (inference/engine.py, cpu_extra_buffers; seen on 2-core Xeon VMs with AMX). The server itself is unchanged.
SERVE = ("import runpy; from lite_delta.inference.engine import cpu_extra_buffers, llama_model_params; "
         "params = llama_model_params(use_extra_bufts=cpu_extra_buffers()); params.__enter__(); "
         "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)")


class Server:
    """One `python -m llama_cpp.server` process on a free loopback port."""

    def __init__(self, gguf: Path, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, "--model", str(gguf), "--model_alias", ALIAS,
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(SERVER_CTX), "--n_threads", "1",
             "--n_threads_batch", "1", "--flash_attn", "true"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90) -> "Server":
        import openai

        client = openai.OpenAI(base_url=self.url, api_key="none", max_retries=0, timeout=5)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}: see {self.log.name}")
            try:
                client.models.list()
                return self
            except openai.APIConnectionError:
                time.sleep(0.2)
        raise RuntimeError(f"llama_cpp.server not ready after {timeout} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory, smollm2_gguf):
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extra (pip install -e .[test])")
    folder = tmp_path_factory.mktemp("servers")
    started = [Server(smollm2_gguf, folder / f"server{i}.log") for i in range(2)]
    try:
        yield [s.wait_ready() for s in started]
    finally:
        for s in started:
            s.kill()


@pytest.fixture
def spare_server(tmp_path, smollm2_gguf, servers):
    server = Server(smollm2_gguf, tmp_path / "spare.log")
    try:
        yield server.wait_ready()
    finally:
        server.kill()


def _exit_code(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code, capsys.readouterr().err


def _generate_args(prompts: Path, out: Path, *urls: str, max_tokens: int = 12) -> list[str]:
    return ["generate", "--prompts", str(prompts), "--out", str(out), "--max-tokens", str(max_tokens),
            "--max-in-flight", "2", "--retries", "1", "--backoff", "0.2", *[a for u in urls for a in ("--endpoint", u)]]


def _kill_when(server: Server, store: Path, lines: int) -> threading.Thread:
    """SIGKILL the server (not the client) once `lines` answers are on disk."""
    def watch() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not (store.exists() and store.read_bytes().count(b"\n") >= lines):
            time.sleep(0.02)
        server.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_fan_out_greedy_equals_local_batched_engine(tmp_path, servers, smollm2_gguf, write_prompts, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    remote, local = tmp_path / "remote", tmp_path / "local"
    args = ["generate", "--prompts", str(prompts), "--out", str(remote), "--max-tokens", "24",
            "--endpoint", servers[0].url, "--endpoint", servers[1].url, "--max-in-flight", "2"]
    main(args)
    # One thread, as each server has: on a busy 2-core machine two spinning llama.cpp threads stall each other.
    generate(GenerateConfig(model=str(smollm2_gguf), prompts={"source": str(prompts)}, out=local,
                            generation={"max_tokens": 24, "parallel": 6, "n_threads": 1}), progress=False)

    served = {r["index"]: r for r in read_completions(remote)}
    ours = {r["index"]: r for r in read_completions(local)}
    assert sorted(served) == sorted(ours) == list(range(len(PROMPTS)))
    for i, r in ours.items():
        s = served[i]
        assert (s["completion"], s["finish_reason"]) == (r["completion"], r["finish_reason"]), i
        assert (s["prompt_tokens"], s["completion_tokens"]) == (r["prompt_tokens"], r["completion_tokens"]), i
        assert s["model"] == ALIAS and s["seed"] == r["seed"] and s["messages"] == r["messages"]
    manifest = json.loads((remote / "generation.json").read_text())
    assert manifest["status"] == "complete" and manifest["engine"] == "endpoint"
    assert manifest["model_identity"] == {"served_model": ALIAS, "name": ALIAS}
    assert manifest["chat_template"] is None and "did not report" in manifest["chat_template_source"]
    run = manifest["invocations"][-1]
    assert run["new_completions"] == len(PROMPTS) and run["retries"] == 0
    assert all(e["completed"] > 0 for e in run["endpoints"]), "both servers answered"
    assert sum(e["completed"] for e in run["endpoints"]) == len(PROMPTS)
    assert "must be the student's template" in capsys.readouterr().err

    before = (remote / "completions.jsonl").read_bytes()
    main(args)
    assert (remote / "completions.jsonl").read_bytes() == before, "a finished run is not redone"
    code, err = _exit_code(capsys, *[a if a != "24" else "25" for a in args])
    assert code == 2 and "other settings" in err and "Traceback" not in err


@pytest.mark.slow
def test_killed_server_leaves_its_work_to_the_other(tmp_path, servers, spare_server, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", KILL_PROMPTS)
    out = tmp_path / "gen"
    watcher = _kill_when(spare_server, out / "completions.jsonl", 2)
    main(_generate_args(prompts, out, spare_server.url, servers[0].url))  # finishes on the server left
    watcher.join()
    records = read_completions(out)
    assert len({r["key"] for r in records}) == len(records) == len(KILL_PROMPTS)
    run = json.loads((out / "generation.json").read_text())["invocations"][-1]
    spare = next(e for e in run["endpoints"] if e["url"] == spare_server.url)
    assert spare["down"] and spare["errors"].get("connection", 0) >= 1
    assert run["retries"] >= spare["retries"] >= 1


@pytest.mark.slow
def test_server_gone_mid_run_then_rerun_continues(tmp_path, servers, spare_server, write_prompts, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", KILL_PROMPTS)
    out = tmp_path / "gen"
    watcher = _kill_when(spare_server, out / "completions.jsonl", 2)
    code, err = _exit_code(capsys, *_generate_args(prompts, out, spare_server.url))
    watcher.join()
    assert code == 2 and "every endpoint failed" in err and "Traceback" not in err, err
    kept = read_completions(out)
    assert 2 <= len(kept) < len(KILL_PROMPTS), "the kill landed mid-run and the finished answers stayed"
    manifest = json.loads((out / "generation.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["invocations"][-1]["retries"] >= 1

    # The same teacher (same served model name) on another server: the rerun asks only for what is missing.
    main(_generate_args(prompts, out, servers[1].url))
    records = read_completions(out)
    assert len({r["key"] for r in records}) == len(records) == len(KILL_PROMPTS)
    assert sorted(r["index"] for r in records) == list(range(len(KILL_PROMPTS)))
    assert [r["completion"] for r in records[: len(kept)]] == [r["completion"] for r in kept]
    rerun = json.loads((out / "generation.json").read_text())
    assert rerun["status"] == "complete" and rerun["invocations"][-1]["new_completions"] == len(KILL_PROMPTS) - len(kept)


def test_bad_request_and_wrong_model_stop_at_once_with_exit_2(tmp_path, servers, write_prompts, capsys):
    too_long = write_prompts(tmp_path / "long.jsonl", ["word " * (2 * SERVER_CTX)])  # over the server's context
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    started = time.perf_counter()
    code, err = _exit_code(capsys, "generate", "--prompts", str(too_long), "--endpoint", servers[0].url,
                           "--retries", "3", "--out", str(tmp_path / "a"))
    assert code == 2 and "refused the request (400)" in err and "maximum context length is 1024" in err, err
    assert "Traceback" not in err
    assert read_completions(tmp_path / "a") == []
    run = json.loads((tmp_path / "a" / "generation.json").read_text())["invocations"][-1]
    assert run["retries"] == 0 and "maximum context length" in run["error"], "a 4xx is not retried"
    code, err = _exit_code(capsys, "generate", "--prompts", str(prompts), "--endpoint", servers[0].url,
                           "--out", str(tmp_path / "b"), "--endpoint-model", "no-such-model")
    assert code == 2 and f"serves {ALIAS}, not 'no-such-model'" in err, err
    code, err = _exit_code(capsys, "generate", "--prompts", str(prompts), "--endpoint", servers[0].url,
                           "--out", str(tmp_path / "c"), "--api-key-env", "LITE_DELTA_NO_SUCH_KEY")
    assert code == 2 and "LITE_DELTA_NO_SUCH_KEY is not set" in err, err
    assert time.perf_counter() - started < 30


@pytest.mark.slow
def test_recipe_with_endpoint_teacher_seeds_each_sample(tmp_path, servers, write_prompts):
    import yaml

    from lite_delta.pipeline import run_recipe

    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    recipe = {"name": "served", "prompts": {"source": str(prompts)},
              "teachers": {"samples": {"endpoints": [s.url for s in servers], "name": "smol-teacher",
                                       "max_in_flight": 1}},
              "generation": {"temperature": 0.9, "max_tokens": 8, "samples_per_prompt": 2, "seed": 3},
              "pairing": {"mode": "by_score", "scorer": "length", "min_margin": 0}}
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_recipe(path, runs_dir=tmp_path / "runs", dry_run=True)  # the plan names the endpoints, sizes nothing
    answers = {}
    for runs in ("runs", "again"):
        run_dir = run_recipe(path, runs_dir=tmp_path / runs, until_stage="generate")
        records = read_completions(run_dir / "generate" / "samples")
        assert len(records) == 4 and {r["model"] for r in records} == {"smol-teacher"}
        answers[runs] = {r["key"]: r["completion"] for r in records}
    # Per-item seeds travel in the request: the same samples whichever server answered which.
    assert answers["runs"] == answers["again"]
    assert len(set(answers["runs"].values())) > 2, "samples of one prompt differ (their seeds differ)"
    templates = json.loads((tmp_path / "runs" / "served" / "manifest.json").read_text())["chat_templates"]
    assert "did not report" in templates["teacher samples"]["source"]

    # Where the teacher runs is not what it is: other machines, other in-flight limits continue the run.
    store = tmp_path / "runs" / "served" / "generate" / "samples" / "completions.jsonl"
    before = store.read_bytes()
    recipe["teachers"]["samples"].update(endpoints=[servers[1].url], max_in_flight=3)
    path.write_text(yaml.safe_dump(recipe))
    run_recipe(path, runs_dir=tmp_path / "runs", until_stage="generate")
    assert store.read_bytes() == before
