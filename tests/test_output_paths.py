"""Every command's output folder (--out, --runs-dir, --model-cache) that names a file, or a place this
process cannot write, is refused with one line and exit 2 before any work, through files.writable_dir.

Tests run as root in CI containers, and root passes permission bits and os.access on /proc and /sys,
so the unwritable places used here are ones even root cannot write: a path under a regular file, a
new folder under /proc, and /sys (checked for real before use)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lite_delta.cli import main
from lite_delta.errors import LiteDeltaError
from lite_delta.files import writable_dir, writable_file
from lite_delta.models.refs import DEMO_MODEL


def _really_unwritable(folder: str) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(name)
    return False


@pytest.fixture
def inputs(tmp_path) -> dict:
    """Valid inputs for each command, so that only the output path is wrong."""
    (tmp_path / "a.file").write_text("keep me\n")
    (tmp_path / "samples").mkdir()
    (tmp_path / "base").mkdir()
    (tmp_path / "tuned").mkdir()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": 0, "output": "42"}) + "\n")
    return {"file": tmp_path / "a.file", "samples": tmp_path / "samples", "base": tmp_path / "base",
            "tuned": tmp_path / "tuned", "pairs": pairs, "preds": preds}


# command -> (argv with {out} for the bad path, the option named in the error)
COMMANDS = {
    "run": (["run", "--runs-dir", "{out}"], "--runs-dir"),
    "run-dry-run": (["run", "--dry-run", "--runs-dir", "{out}"], "--runs-dir"),
    "generate": (["generate", "--model", DEMO_MODEL, "--prompts", "builtin:demo", "--out", "{out}"], "--out"),
    "pair": (["pair", "--samples", "{samples}", "--out", "{out}"], "--out"),
    "train": (["train", "--pairs", "{pairs}", "--student", DEMO_MODEL, "--out", "{out}"], "--out"),
    "eval": (["eval", "--model", DEMO_MODEL, "--tasks", "gsm8k", "--out", "{out}"], "--out"),
    "eval-model-cache": (["eval", "--model", DEMO_MODEL, "--tasks", "gsm8k", "--out", "{tmp}/eval",
                            "--model-cache", "{out}"], "--model-cache"),
    "score": (["score", "--task", "gsm8k", "--predictions", "{preds}", "--out", "{out}"], "--out"),
    "compare": (["compare", "{base}", "{tuned}", "--out", "{out}"], "--out"),
    "bench-generate": (["bench", "generate", "--model", DEMO_MODEL, "--out", "{out}/bench.json"], "--out"),
    "doctor": (["doctor", "--runs-dir", "{out}"], "--runs-dir"),
}


def _refused(capsys, argv: list[str], option: str, shown: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, f"one line, not:\n{err}"
    assert err.startswith("error: ") and option in err and shown in err, err
    return err


def _argv(command: str, inputs: dict, out: str) -> tuple[list[str], str]:
    template, option = COMMANDS[command]
    values = {**{k: str(v) for k, v in inputs.items()}, "out": out, "tmp": str(inputs["file"].parent)}
    return [arg.format(**values) for arg in template], option


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_path_that_is_a_file_exits_2_with_one_line(command, inputs, capsys):
    target = inputs["file"]
    argv, option = _argv(command, inputs, str(target))
    if command == "bench-generate":  # --out names a file there: a file where its folder belongs
        err = _refused(capsys, argv, option, str(target))
        assert "is a file" in err
    else:
        err = _refused(capsys, argv, option, str(target))
        assert f"{option} {target} is a file, not a folder" in err
    assert target.read_text() == "keep me\n", "the file is left alone"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_path_under_a_file_exits_2_with_one_line(command, inputs, capsys):
    target = inputs["file"] / "sub"
    argv, option = _argv(command, inputs, str(target))
    err = _refused(capsys, argv, option, str(target))
    assert f"{inputs['file']} is a file" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_folder_even_root_cannot_create_exits_2(command, inputs, capsys):
    target = f"/proc/lite-delta-test-{os.getpid()}"
    argv, option = _argv(command, inputs, target)
    _refused(capsys, argv, option, target)
    assert not Path(target).exists()


@pytest.mark.parametrize("command", ["run", "generate", "train", "eval", "doctor"])
def test_an_existing_folder_that_cannot_be_written_exits_2(command, inputs, capsys):
    if not Path("/sys").is_dir() or not _really_unwritable("/sys"):
        pytest.skip("/sys is writable here")
    argv, option = _argv(command, inputs, "/sys")
    err = _refused(capsys, argv, option, "/sys")
    assert "cannot write in /sys" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes a read-only folder anyway")
def test_a_read_only_folder_exits_2_for_a_normal_user(inputs, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        argv, option = _argv("generate", inputs, str(folder / "gen"))
        _refused(capsys, argv, option, str(folder / "gen"))
    finally:
        folder.chmod(0o755)


def test_the_reported_case_in_a_real_process(inputs):
    """`lite-delta generate ... --out FILE` ended in a FileExistsError traceback and exit 1."""
    proc = subprocess.run([sys.executable, "-m", "lite_delta", "generate", "--model", DEMO_MODEL, "--prompts",
                           "builtin:demo", "--out", str(inputs["file"])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"--out {inputs['file']} is a file, not a folder" in proc.stderr


def test_writable_dir_creates_only_when_asked(tmp_path):
    assert writable_dir(tmp_path / "a" / "b", "--out", create=False) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists(), "a check alone creates nothing"
    assert writable_dir(tmp_path / "a" / "b", "--out").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == [], "the write probe leaves nothing behind"
    assert writable_file(tmp_path / "c" / "x.json", "--out") == tmp_path / "c" / "x.json"
    assert (tmp_path / "c").is_dir() and not (tmp_path / "c" / "x.json").exists()
    with pytest.raises(LiteDeltaError, match=r"--out .* is a folder: give a file path"):
        writable_file(tmp_path / "c", "--out")
