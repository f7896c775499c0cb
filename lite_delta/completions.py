"""Append-only JSONL store of completions, keyed so that a rerun resumes and never duplicates.

Each finished completion is one line written with a single ``write`` and flushed at once, so a
crash or SIGKILL loses at most the sequences still in flight. A torn last line (the process died
mid-write) is cut off on the next open; a corrupt line anywhere else is an error, never skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from lite_delta.errors import LiteDeltaError
from lite_delta.files import FolderLock, parse_json

COMPLETIONS_FILE = "completions.jsonl"

# Fields every completion record carries (other stages rely on them).
REQUIRED_FIELDS = (
    "key",
    "prompt_id",
    "index",
    "sample",
    "messages",
    "completion",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "model",
    "seed",
)


def completion_key(**parts: Any) -> str:
    """Content hash of everything that determines an output: model identity, template, prompt, sampling, seed."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def template_kwargs_part(kwargs: dict | None) -> dict:
    """The chat template kwargs as a key part: none while empty, so keys made before the setting existed stay valid."""
    return {"template_kwargs": kwargs} if kwargs else {}


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_thinking(text: str) -> tuple[str | None, str]:
    """(thinking, answer) of a completion that starts with a reasoning block; (None, text) when it does not.

    A block is ``<think>...</think>`` at the start (whitespace aside), or text closed by ``</think>`` with no
    opening tag, where the template opened it in the prompt (DeepSeek-R1 distills). A block never closed
    (cut off by max_tokens) is all thinking: the answer is empty."""
    body = text.lstrip()
    opened = body.startswith(THINK_OPEN)
    if opened:
        body = body[len(THINK_OPEN):]
    head, closed, tail = body.partition(THINK_CLOSE)
    if not closed:
        return (body.strip(), "") if opened else (None, text)
    if THINK_OPEN in head:  # a tag inside the answer, not a leading block
        return None, text
    return head.strip(), tail.lstrip()


def _parse_lines(path: Path) -> tuple[list[dict], int]:
    """Parse every complete line; return the records and the byte length of the valid prefix."""
    data = path.read_bytes()
    records: list[dict] = []
    good_end = 0
    pos = 0
    line_no = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        line_no += 1
        if nl == -1:  # torn final write: no newline, drop it
            break
        raw = data[pos:nl]
        try:
            record = parse_json(raw, "it")
            if not isinstance(record, dict) or not isinstance(record.get("key"), str):
                raise ValueError("not a completion record (an object with a string `key`)")
        except (LiteDeltaError, ValueError) as exc:
            if data.find(b"\n", nl + 1) == -1 and not data[nl + 1 :].strip():
                break  # a garbled last line is a torn write too
            raise LiteDeltaError(
                f"{path}: line {line_no} is not a valid completion record ({exc}); "
                "fix or delete that line and rerun"
            ) from None
        records.append(record)
        pos = good_end = nl + 1
    return records, good_end


def read_completions(path: str | os.PathLike) -> list[dict]:
    """All records of a completions file or of a generate output directory (read only, tolerant of a torn tail)."""
    path = Path(path)
    if path.is_dir():
        path = path / COMPLETIONS_FILE
    if not path.is_file():
        raise LiteDeltaError(f"no completions at {path}: run `lite-delta generate --out {path.parent}` first")
    records, _ = _parse_lines(path)
    for i, record in enumerate(records, 1):
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise LiteDeltaError(f"{path}: record {i} lacks field(s) {', '.join(missing)}")
    return records


class CompletionStore:
    """The completions file of one generate run, opened for appending."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(self.path.parent, "--out").acquire()  # two writers would duplicate every key
        self.records: dict[str, dict] = {}
        try:
            if self.path.exists():
                records, good_end = _parse_lines(self.path)
                if good_end < self.path.stat().st_size:
                    with open(self.path, "r+b") as f:  # cut the torn tail so appends start on a fresh line
                        f.truncate(good_end)
                for record in records:
                    self.records.setdefault(record["key"], record)
            self._file = open(self.path, "a", encoding="utf-8")
        except BaseException:
            self._lock.release()
            raise

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records.values())

    def refuse_others(self, wanted: set[str]) -> None:
        """Closes the store and raises if it holds any key outside `wanted` (other settings, prompts or model)."""
        stale = sum(1 for record in self if record["key"] not in wanted)
        if stale:
            self.close()
            raise LiteDeltaError(
                f"{self.path} holds {stale} completion(s) made with other settings, prompts or model; "
                "use a new --out directory, or delete that file to start over"
            )

    def append(self, record: dict) -> None:
        if record["key"] in self.records:
            return
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.records[record["key"]] = record

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        self._lock.release()

    def __enter__(self) -> "CompletionStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
