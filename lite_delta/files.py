"""Files that survive a crash: atomic writes (the old file or the new one, never half of one),
append-only JSONL records read back with a torn last line cut off, output folders checked
before a stage starts its work, and one process at a time writing into a folder."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Hashable
from pathlib import Path

from lite_delta.errors import LiteDeltaError


def lite_delta_cache() -> Path:
    """lite-delta's own cache (derived teachers, Unsloth's generated code): $LITE_DELTA_CACHE, else
    ~/.cache/lite-delta."""
    return Path(os.environ.get("LITE_DELTA_CACHE") or Path.home() / ".cache" / "lite-delta")


def cache_folder(cache_dir: str | Path | None, name: str, what: str) -> Path:
    """`cache_dir`, else $LITE_DELTA_CACHE/NAME, created; one LiteDeltaError naming `what` if it cannot be."""
    folder = Path(cache_dir) if cache_dir is not None else lite_delta_cache() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LiteDeltaError(f"cannot create the {what} cache {folder}: {exc.strerror or exc} "
                             "(set LITE_DELTA_CACHE to a writable folder)") from None
    return folder


def writable_dir(path: str | Path, option: str, *, create: bool = True) -> Path:
    """``path`` as a folder this process can write, created (with its parents) unless ``create`` is
    false; otherwise one LiteDeltaError naming ``option`` and the path. Writing is tried, not
    inferred from permission bits: root passes ``os.access`` on read-only places such as /proc and /sys."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise LiteDeltaError(f"{option} {path} is a file, not a folder: give a folder path (it is created if missing)")
    _check_folder(path, f"{option} {path}", create)
    return path


def writable_file(path: str | Path, option: str) -> Path:
    """``path`` as a file this process can write (its folder created); one LiteDeltaError otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise LiteDeltaError(f"{option} {path} is a folder: give a file path")
    _check_folder(path.parent, f"{option} {path}", True)
    return path


def _check_folder(folder: Path, what: str, create: bool) -> None:
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # where missing folders would go
    if not existing.is_dir():
        raise LiteDeltaError(f"{what}: {existing} is a file, so no folder can be made under it")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LiteDeltaError(f"{what}: the folder {folder} cannot be created ({_reason(exc)})") from None
    probe = folder if create else existing
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".lite-delta-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise LiteDeltaError(f"{what}: cannot write in {probe} ({_reason(exc)})") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # how a lone surrogate gets into JSON


def holds_lone_surrogate(value) -> bool:
    """Whether a string, or any string inside lists and dicts, holds a lone UTF-16 surrogate (not text)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json(data: bytes | str, where: str):
    """One JSON document (a file, or one line of a JSONL file) that someone else wrote, as a value; any way it
    can be broken is one LiteDeltaError naming ``where`` (a file, or "FILE: line N"): not UTF-8, not JSON,
    nested past the parser, an integer past Python's 4300 digits, or a lone UTF-16 surrogate ("\\ud800"), which
    is valid JSON but not text, and would fail every later write or hash."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise LiteDeltaError(f"{where} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LiteDeltaError(f"{where} is not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise LiteDeltaError(f"{where} nests JSON deeper than can be read") from None
    except ValueError as exc:  # e.g. an integer over 4300 digits
        raise LiteDeltaError(f"{where} is not valid JSON: {str(exc)[:100]}") from None
    if _SURROGATE_ESCAPE.search(text) and holds_lone_surrogate(value):
        raise LiteDeltaError(f"{where} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text: fix it")
    return value


def read_appended(path: Path, key: Callable[[dict], Hashable], *, repair: bool = True) -> dict:
    """Records of an append-only JSONL file by key. A torn last line (a run killed mid-write) is
    dropped, and with ``repair`` cut off the file; a corrupt line before the end is an error."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    done: dict = {}
    good = 0
    for number, line in enumerate(raw.splitlines(keepends=True), 1):
        if not line.endswith(b"\n"):
            break
        try:
            record = parse_json(line, f"{path}: line {number}")
            done[key(record)] = record
        except (LiteDeltaError, KeyError, TypeError, ValueError) as exc:
            if raw[good + len(line):].strip():
                reason = exc if isinstance(exc, LiteDeltaError) else f"{path}: line {number} is not a record ({exc!r:.80})"
                raise LiteDeltaError(f"{reason}: a corrupt line that is not the last one (not a torn write); "
                                     "fix or delete it") from None
            break
        good += len(line)
    if repair and good < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


LOCK_FILE = ".lite-delta.lock"


class FolderLock:
    """One lite-delta process at a time writing into ``folder`` (an advisory lock on FOLDER/.lite-delta.lock,
    released when the process ends, however it ends). A second process gets one LiteDeltaError naming the
    holder, instead of both appending the same records. Where the OS has no flock (Windows), nothing is locked."""

    def __init__(self, folder: str | Path, option: str):
        self.folder, self.option, self._fd = Path(folder), option, None

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise LiteDeltaError(f"{self.folder} is in use by another lite-delta process"
                                 f"{f' (pid {holder})' if holder.isdigit() else ''}: let it finish, or use another "
                                 f"{self.option}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
