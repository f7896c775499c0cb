"""Held-out pairs: a seeded share of the prompts kept out of training, so no prompt is on both sides.

The split is by prompt, not by row: a prompt with several pairs (by_score's pairs_per_prompt) would otherwise
be trained on and evaluated on at once, and the held-out numbers would measure memory. It is written to
<out>/split.json and read back on resume, so a resumed run evaluates the same pairs it started with.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

from lite_delta.errors import LiteDeltaError
from lite_delta.files import parse_json, write_json

SPLIT = "split.json"


def prompt_key(row: dict) -> str:
    """One prompt (its messages and template variables), as a short stable hash."""
    text = json.dumps([row["prompt"], row.get("chat_template_kwargs")], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def held_out_prompts(rows: list[dict], fraction: float, seed: int) -> set[str]:
    """ceil(fraction x prompts) prompt keys, at least one held out and one left to train on."""
    keys = sorted({prompt_key(r) for r in rows})
    if len(keys) < 2:
        raise LiteDeltaError(f"train.eval_fraction {fraction:g}: the pairs hold {len(keys)} prompt(s); holding "
                             "prompts out needs at least 2 (set eval_fraction: 0)")
    n = min(len(keys) - 1, max(1, math.ceil(fraction * len(keys))))
    random.Random(seed).shuffle(keys)
    return set(keys[:n])


def split_by_prompt(rows: list[dict], fraction: float, seed: int, out: Path | None = None,
                    main: bool = True) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows). With `out`, the held-out prompts are kept in out/split.json and reused."""
    record = out / SPLIT if out is not None else None
    held = None
    if record is not None and record.is_file():
        saved = parse_json(record.read_bytes(), str(record))
        if isinstance(saved, dict) and saved.get("fraction") == fraction and saved.get("seed") == seed:
            held = set(saved.get("held_out", []))
    if held is None:
        held = held_out_prompts(rows, fraction, seed)
        if record is not None and main:
            write_json(record, {"fraction": fraction, "seed": seed, "by": "prompt", "held_out": sorted(held)})
    train = [r for r in rows if prompt_key(r) not in held]
    evaluation = [r for r in rows if prompt_key(r) in held]
    if not train or not evaluation:
        raise LiteDeltaError(f"{record or 'the split'}: holds out {len(evaluation)} of {len(rows)} pairs, leaving "
                             f"{len(train)} to train on; delete it to split the pairs again")
    return train, evaluation
