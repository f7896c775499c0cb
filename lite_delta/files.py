"""Files that survive a crash: atomic writes (the old file or the new one, never half of one) and
append-only JSONL records read back with a torn last line cut off."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable
from pathlib import Path

from lite_delta.errors import LiteDeltaError


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_appended(path: Path, key: Callable[[dict], Hashable], *, repair: bool = True) -> dict:
    """Records of an append-only JSONL file by key. A torn last line (a run killed mid-write) is
    dropped, and with ``repair`` cut off the file; a corrupt line before the end is an error."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    done: dict = {}
    good = 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            record = json.loads(line)
            done[key(record)] = record
        except (ValueError, KeyError, TypeError):
            if raw[good + len(line):].strip():
                raise LiteDeltaError(f"{path}: a corrupt line that is not the last one; fix or delete it") from None
            break
        good += len(line)
    if repair and good < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    return done
