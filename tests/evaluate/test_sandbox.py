"""The sandbox stops runaway and escaping programs without harming the run that started them."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from lite_delta.evaluate.sandbox import run_python

REPO = Path(__file__).resolve().parents[2]


def test_a_normal_program_runs_and_reports_its_isolation():
    result = run_python("import math\nprint(math.factorial(5))")
    assert result.status == "ok" and result.stdout.strip() == "120"
    assert result.isolation["python_guard"] is True


def test_an_infinite_loop_is_stopped_by_the_time_limit():
    started = time.perf_counter()
    result = run_python("while True:\n    pass", timeout=2)
    assert result.status in ("timeout", "killed")
    assert time.perf_counter() - started < 10
    assert run_python("print('after')").stdout.strip() == "after"  # the run goes on


@pytest.mark.parametrize("guard", [True, False], ids=["python-guard", "kernel-only"])
def test_a_fork_bomb_is_stopped(guard):
    code = "import posix\nwhile True:\n    posix.fork()"
    before = len(os.listdir("/proc"))
    result = run_python(code, timeout=3, guard=guard)
    assert result.status != "ok"
    assert any(s in result.stderr for s in ("BlockingIOError", "Resource temporarily unavailable", "os.fork"))
    time.sleep(0.2)
    assert len(os.listdir("/proc")) < before + 20, "no forked processes left behind"


def test_memory_is_limited():
    result = run_python("x = bytearray(2 << 30)", memory_mb=512)
    assert result.status != "ok" and "MemoryError" in result.stderr


def _network_layer_expected(guard: bool) -> bool:
    probe = run_python("pass", guard=guard)
    return guard or probe.isolation.get("network") == "namespace"


@pytest.mark.parametrize("guard", [True, False], ids=["python-guard", "kernel-only"])
def test_network_calls_fail(guard):
    if not _network_layer_expected(guard):
        pytest.skip("this kernel refused a network namespace; the Python guard is the only network layer")
    code = "import socket\ns = socket.socket()\ns.settimeout(3)\ns.connect(('1.1.1.1', 80))\nprint('CONNECTED')"
    result = run_python(code, timeout=5, guard=guard)
    assert "CONNECTED" not in result.stdout
    assert result.status == "error"
    assert any(s in result.stderr for s in ("Network is unreachable", "socket", "PermissionError"))
    socket.getaddrinfo("localhost", 80)  # the parent's own networking is untouched


@pytest.mark.parametrize("target", ["repo", "tmp"])
def test_writes_outside_the_work_directory_are_refused(target, tmp_path):
    folder = REPO if target == "repo" else Path("/tmp")
    victim = folder / f"sandbox-escape-{uuid.uuid4().hex}.txt"
    code = f"open({str(victim)!r}, 'w').write('escaped')"
    result = run_python(code)
    assert result.status == "error" and "PermissionError" in result.stderr
    assert not victim.exists()
    # and a file inside the work directory is fine
    assert run_python("open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())").stdout.strip() == "ok"


def test_deleting_outside_is_refused(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    os.chmod(tmp_path, 0o777)
    result = run_python(f"import os\nos.remove({str(keep)!r})")
    assert result.status == "error"
    assert keep.read_text() == "precious"


def test_subprocesses_and_ctypes_are_refused():
    assert run_python("import subprocess\nsubprocess.run(['true'])").status == "error"
    assert run_python("import os\nos.system('true')").status == "error"
    result = run_python("import ctypes\nctypes.CDLL(None)")
    assert result.status == "error"
