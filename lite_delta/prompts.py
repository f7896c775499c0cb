"""Load the prompts that the teachers answer, from a file, a built-in set or a Hub dataset.

A prompt is a conversation that ends before the assistant's reply. Rows may hold a plain string
(one user turn) or a list of ``{role, content}`` messages; the conversation columns (``messages``,
``chosen``, ``conversations``) must hold a list, and a string there is refused with its row named.
A conversation that already ends with an assistant turn is cut before that turn, which is how the
paper takes prompts from the ``chosen`` column of the Tulu 3 preference mixture.

Two more columns are read beside the prompt's: Alpaca's ``input`` (with ``instruction``) and ``system``, a
per-row system message (ahead of ``generation.system``, which only fills in where a row has none).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lite_delta.errors import LiteDeltaError
from lite_delta.files import parse_json

# Checked in this order when no column is named.
PROMPT_COLUMNS = ("messages", "prompt", "chosen", "conversations", "instruction", "question")
# Columns whose name says they hold a conversation: a plain string there is refused, not read as a prompt.
CONVERSATION_COLUMNS = ("messages", "chosen", "conversations")
ROLES = ("system", "user", "assistant", "tool")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# A per-row system message; Alpaca's second field, joined to `instruction` (see _alpaca).
SYSTEM_COLUMN, ALPACA_INPUT = "system", "input"
# ShareGPT-style {"from": ..., "value": ...} turns, as found in many `conversations` columns.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MISSING = object()


@dataclass(frozen=True)
class Prompt:
    """One prompt: a content hash, its position in the loaded list, and the chat messages."""

    prompt_id: str  # first 16 hex digits of the sha256 of the canonical JSON of `messages`
    index: int
    messages: tuple[dict, ...] = field(hash=False)  # dicts are unhashable; prompt_id stands for them


def prompt_id(messages: list[dict] | tuple[dict, ...]) -> str:
    """Content hash of a conversation: the same messages give the same id in every run."""
    blob = json.dumps(list(messages), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def load_prompts(
    source: str,
    *,
    column: str | None = None,
    split: str = "train",
    config: str | None = None,
    n: int | None = None,
    sample: Literal["first", "random"] = "random",
    seed: int = 0,
) -> tuple[list[Prompt], dict]:
    """Read, clean, deduplicate and sample prompts.

    ``source``: a .jsonl/.json/.parquet/.csv file, ``builtin:NAME`` (e.g. ``builtin:demo``), a Hub
    dataset id ``ORG/NAME`` (``config``: its config name, e.g. ``main`` for gsm8k) or a local folder laid out
    like one. ``n``/``sample``/``seed`` pick a subset that keeps source order.
    Returns the prompts and counts: ``rows``, ``empty``, ``duplicates``, ``selected``.
    """
    if sample not in ("first", "random"):
        raise LiteDeltaError(f"prompt sample must be 'first' or 'random', not {sample!r}")
    if n is not None and n < 1:
        raise LiteDeltaError(f"number of prompts must be at least 1, not {n}")

    label, columns, cells = _read_source(source, split, config)
    column = _pick_column(label, columns, column)
    extra = [name for name in (ALPACA_INPUT, SYSTEM_COLUMN) if name in columns and name != column]
    if ALPACA_INPUT in extra and column != "instruction":
        extra.remove(ALPACA_INPUT)

    unique: dict[str, tuple[dict, ...]] = {}
    stats = {"rows": 0, "empty": 0, "duplicates": 0, "selected": 0}
    for (where, value), *more in zip(cells(column), *(cells(name) for name in extra)):
        stats["rows"] += 1
        row = dict(zip(extra, (cell for _, cell in more)))
        if ALPACA_INPUT in row:
            value = _alpaca(value, row[ALPACA_INPUT], f"{label} {where}")
        messages = _to_messages(value, f"{label} {where}", column)
        if messages is not None and SYSTEM_COLUMN in row:
            messages = _with_system(messages, row[SYSTEM_COLUMN], f"{label} {where}")
        if messages is None:
            stats["empty"] += 1
            continue
        pid = prompt_id(messages)
        if pid in unique:
            stats["duplicates"] += 1
        else:
            unique[pid] = tuple(messages)
    if not unique:
        raise LiteDeltaError(
            f"no prompts in {label}: {stats['rows']} rows, all empty in column '{column}' "
            "(or with no user turn)"
        )

    ids = list(unique)
    if n is not None and n < len(ids):
        if sample == "first":
            ids = ids[:n]
        else:
            ids = [ids[i] for i in sorted(random.Random(seed).sample(range(len(ids)), n))]
    prompts = [Prompt(prompt_id=pid, index=i, messages=unique[pid]) for i, pid in enumerate(ids)]
    stats["selected"] = len(prompts)
    return prompts, stats


def prompt_share(prompts: list[Prompt], r: int, n: int, seed: int = 0) -> list[Prompt]:
    """Share ``r`` of ``n`` (1-based) of ``prompts``, in their order: the prompts ranked by a seeded hash of their
    ids, every n-th from rank r - 1. The n shares are disjoint, make up the whole list, and differ in size by at
    most one; the same prompts and seed give the same shares in every run (on-policy rounds)."""
    if not 1 <= r <= n:
        raise LiteDeltaError(f"prompt share {r} of {n}: need 1 <= r <= n")
    rank = sorted(prompts, key=lambda p: hashlib.sha256(f"{seed}:{p.prompt_id}".encode()).hexdigest())
    keep = {p.prompt_id for p in rank[r - 1::n]}
    return [p for p in prompts if p.prompt_id in keep]


# --- sources ------------------------------------------------------------------------------------
# Each reader returns (label for messages, column names, cells) where cells(column) yields
# (location such as "line 3" or "row 3", value) pairs, _MISSING where a row lacks the column.


def _read_source(source: str, split: str, config: str | None):
    if source.startswith("builtin:"):
        return _read_builtin(source)
    path = Path(source).expanduser()
    if path.is_file():
        return _read_file(path)
    if path.is_dir():  # a dataset repo's layout, read as the Hub's copy of it would be
        return _read_hub(str(path), split, config)
    looks_like_path = (
        source.startswith((".", "/", "~"))
        or path.suffix.lower() in FILE_SUFFIXES
        or not _HUB_ID.match(source)
    )
    if looks_like_path:
        raise LiteDeltaError(
            f"prompts file not found: {source} (give a .jsonl, .json, .parquet or .csv file, "
            "builtin:NAME, or a Hub dataset id ORG/NAME)"
        )
    return _read_hub(source, split, config)


def _read_builtin(source: str):
    name = source.removeprefix("builtin:")
    data = importlib.resources.files("lite_delta") / "data"
    resource = data / f"{name}.jsonl"
    if not name or not resource.is_file():
        available = sorted(p.name.removesuffix(".jsonl") for p in data.iterdir() if p.name.endswith(".jsonl"))
        raise LiteDeltaError(
            f"no built-in prompt set {name!r}; available: {', '.join('builtin:' + a for a in available)}"
        )
    return _parse_jsonl(source, resource.read_bytes())


def _read_file(path: Path):
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise LiteDeltaError(
            f"{path} has an unsupported extension {suffix or '(none)'}: use one of {', '.join(FILE_SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise LiteDeltaError(f"prompts file {path} is empty")
    if suffix == ".jsonl":
        return _parse_jsonl(str(path), path.read_bytes())
    if suffix == ".json":
        return _parse_json(str(path), path.read_bytes())
    if suffix == ".csv":
        return _read_csv(path)
    return _read_parquet(path)


def _parse_jsonl(label: str, data: bytes):
    rows: list[tuple[str, dict]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        row = parse_json(raw, f"{label} line {number}")
        if not isinstance(row, dict):
            raise LiteDeltaError(f"{label} line {number} is not a JSON object: each line must be {{\"prompt\": ...}}")
        rows.append((f"line {number}", row))
    if not rows:
        raise LiteDeltaError(f"prompts file {label} has no rows (only blank lines)")
    return _from_rows(label, rows)


def _parse_json(label: str, data: bytes):
    doc = parse_json(data, label)
    if isinstance(doc, dict):
        doc = next((doc[k] for k in ("data", "rows", "train") if isinstance(doc.get(k), list)), doc)
    if not isinstance(doc, list):
        raise LiteDeltaError(f"{label} must hold a list of objects, or an object with a 'data', 'rows' or 'train' list")
    if not doc:
        raise LiteDeltaError(f"prompts file {label} has no rows")
    rows = []
    for number, row in enumerate(doc, start=1):
        if not isinstance(row, dict):
            raise LiteDeltaError(f"{label} row {number} is not a JSON object: each row must be {{\"prompt\": ...}}")
        rows.append((f"row {number}", row))
    return _from_rows(label, rows)


def _from_rows(label: str, rows: list[tuple[str, dict]]):
    columns = list(dict.fromkeys(key for _, row in rows for key in row))

    def cells(column: str):
        return ((where, row.get(column, _MISSING)) for where, row in rows)

    return label, columns, cells


def _read_csv(path: Path):
    """A CSV file with a header row; every cell stays text (no number guessing), an empty cell is empty."""
    rows: list[tuple[str, dict]] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for row in reader:
                if None in row:
                    raise LiteDeltaError(f"{path} line {reader.line_num} has more cells than the header has columns")
                rows.append((f"line {reader.line_num}", {k: v for k, v in row.items() if v is not None}))
    except UnicodeDecodeError:
        raise LiteDeltaError(f"{path} is not UTF-8 text: save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise LiteDeltaError(f"{path} is not valid CSV: {exc}") from None
    if not rows:
        raise LiteDeltaError(f"prompts file {path} has no rows (only a header)")
    return _from_rows(str(path), rows)


def _read_parquet(path: Path):
    import datasets

    try:
        table = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise LiteDeltaError(f"{path} could not be read as Parquet: {exc}") from None
    return _from_dataset(str(path), table)


def _read_hub(source: str, split: str, config: str | None):
    from lite_delta.hub_data import load_split

    table = load_split(source, config, split, "prompts dataset")
    return _from_dataset(source + (f" (config {config})" if config else ""), table)


def _from_dataset(label: str, table):
    if table.num_rows == 0:
        raise LiteDeltaError(f"prompts source {label} has no rows")

    def cells(column: str):
        return ((f"row {i}", value) for i, value in enumerate(table[column], start=1))

    return label, list(table.column_names), cells


# --- rows to messages ---------------------------------------------------------------------------


def _pick_column(label: str, columns: list[str], column: str | None) -> str:
    found = ", ".join(columns) or "none"
    if column is not None:
        if column not in columns:
            raise LiteDeltaError(f"column '{column}' not found in {label}; columns found: {found}")
        return column
    for candidate in PROMPT_COLUMNS:
        if candidate in columns:
            return candidate
    raise LiteDeltaError(
        f"no prompt column in {label} (columns found: {found}): pass --prompt-column NAME "
        f"(looked for {', '.join(PROMPT_COLUMNS)})"
    )


def _to_messages(value: Any, where: str, column: str) -> list[dict] | None:
    """Chat messages for one cell, or None when it holds no prompt (counted as empty)."""
    if value is _MISSING:
        raise LiteDeltaError(f"{where} has no '{column}' field: every row needs one")
    if value is None:
        return None
    conversation = column in CONVERSATION_COLUMNS
    if isinstance(value, str) and not conversation:
        return [{"role": "user", "content": value}] if value.strip() else None
    if not isinstance(value, (list, tuple)):  # a string in a conversation column: a mistake, or HH's prompt+answer
        wanted = ("" if conversation else "a string or ") + "a list of {role, content} messages"
        hint = "; put a plain-text prompt in a 'prompt' field instead" if isinstance(value, str) else ""
        raise LiteDeltaError(f"{where}, field '{column}' must be {wanted}, not {type(value).__name__}{hint}")
    messages = [_to_message(item, f"{where}, field '{column}' message {i}") for i, item in enumerate(value, start=1)]
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]  # the prompt is everything before the reply
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        return None
    return messages


def _alpaca(instruction: Any, extra: Any, where: str) -> Any:
    """Alpaca's `instruction` and its optional `input`, joined by a blank line as Alpaca's own prompt template
    puts them one after the other (its "### Instruction:" and "### Input:" headers are left out: the student's
    chat template frames the turn)."""
    if extra is _MISSING or extra is None or (isinstance(extra, str) and not extra.strip()):
        return instruction
    if not isinstance(extra, str):
        raise LiteDeltaError(f"{where}, field '{ALPACA_INPUT}' must be a string, not {type(extra).__name__}")
    if not isinstance(instruction, str) or not instruction.strip():
        return instruction  # no instruction: empty (counted), or refused by _to_messages
    return f"{instruction}\n\n{extra}"


def _with_system(messages: list[dict], system: Any, where: str) -> list[dict]:
    """A `system` column's text as the conversation's first message (a conversation that starts with its own
    system message must hold the same text: two would be ambiguous)."""
    if system is _MISSING or system is None or (isinstance(system, str) and not system.strip()):
        return messages
    if not isinstance(system, str):
        raise LiteDeltaError(f"{where}, field '{SYSTEM_COLUMN}' must be a string, not {type(system).__name__}")
    if messages[0]["role"] == "system":
        if messages[0]["content"] != system:
            raise LiteDeltaError(f"{where}: field '{SYSTEM_COLUMN}' differs from the conversation's own system "
                                 "message; keep only one")
        return messages
    return [{"role": "system", "content": system}, *messages]


def _to_message(item: Any, where: str) -> dict:
    if isinstance(item, dict) and "role" not in item and "from" in item:
        item = {"role": SHAREGPT_ROLES.get(item["from"], item["from"]), "content": item.get("value")}
    if not isinstance(item, dict):
        raise LiteDeltaError(f"{where} must be an object with 'role' and 'content', not {type(item).__name__}")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise LiteDeltaError(f"{where} has role {role!r}: it must be one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise LiteDeltaError(f"{where} ('{role}') must have string 'content', not {type(content).__name__}")
    return {"role": role, "content": content}
