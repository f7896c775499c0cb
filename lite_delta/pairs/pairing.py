"""Chosen/rejected pairs from generated completions, written as a TRL conversational preference set.

Two ways to label a pair, neither with a judge:
- ``by_model`` (the paper's heuristic): the stronger model's answer is chosen, the weaker one's rejected,
  joined on (prompt_id, sample). Only mechanical filters apply.
- ``by_score``: several samples of one model per prompt, ranked by a countable scorer (e.g. bold sections);
  the best is chosen and the worst rejected when they differ by at least ``min_margin``.

Optionally a **relevance gate** (``relevance_gate``): a pair whose chosen answer is less relevant to its prompt
than the rejected one by more than the gate (nats per token, the evaluation's relevance figure under the student)
is dropped, so the delta DPO learns carries the utility and not a move away from the prompt. The caller gives the
judge as a function; this module loads no model.

Optionally **contrast pairs** (``contrast``, ``contrast.py``): a prompt's best chosen answer against a degenerate
copy of itself, placed after that prompt's first sampled pair; ``stats.json`` counts them apart.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lite_delta.errors import LiteDeltaError
from lite_delta.files import writable_dir, write_text
from lite_delta.completions import read_completions, split_thinking
from lite_delta.pairs.contrast import ContrastKind, with_contrast
from lite_delta.utility_scorers import SCORERS, Scorer, checked_scorer, get_scorer

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"
STATS_FILE = "stats.json"
DATASET_DIR = "dataset"

# Every filter that can drop a candidate, in the order by_model applies them; all appear in stats.json.
FILTERS = ("unmatched", "empty", "truncated", "identical", "over_max_length", "too_few_samples", "below_margin")


class PairConfig(BaseModel):
    """How to turn completions into preference pairs."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["by_model", "by_score"]
    """by_model: chosen model's answer beats the rejected model's (the paper). by_score: rank one model's samples."""
    chosen: Path | None = None
    """by_model: generate output dir (or completions.jsonl) of the stronger model, e.g. Qwen2.5-3B."""
    rejected: Path | None = None
    """by_model: generate output dir (or completions.jsonl) of the weaker model, e.g. Qwen2.5-1.5B."""
    samples: Path | None = None
    """by_score: generate output dir (or completions.jsonl) holding k >= 2 samples per prompt."""
    scorer: str = "sections"
    """Built-in scorer (sections, paragraphs, list_items, list_markers, length) or 'package.module:function'."""
    min_margin: float = Field(1.0, ge=0)
    """by_score: smallest chosen-minus-rejected score kept (the paper's bold-section delta is 1)."""
    pairs_per_prompt: int = Field(1, gt=0)
    """by_score: up to N disjoint pairs per prompt (best vs worst, second best vs second worst, ...), each
    kept only if it clears ``min_margin``; no answer is used twice. 1: best vs worst only (the paper's one pair)."""
    allow_truncated: bool = False
    """Keep answers that hit the token limit (finish_reason 'length'); the paper kept none cut off."""
    max_length: int | None = Field(2048, gt=0)
    """Drop a side whose prompt_tokens + completion_tokens exceeds this (the paper trained at 2048); None: no limit."""
    keep_thinking: bool = False
    """Keep a leading ``<think>...</think>`` block in the answers. False: pair (and score) the answer after it,
    counted as ``thinking_stripped`` in stats.json; a block never closed leaves an empty answer (dropped)."""
    relevance_gate: float | None = Field(None, ge=0)
    """Drop a pair whose chosen answer's relevance is below the rejected answer's by more than this (nats per
    token; ``make_pairs``'s ``relevance`` judges it). None: no gate."""
    contrast: list[ContrastKind] = Field(default_factory=list)
    """Add a contrast pair per prompt: its best chosen answer against a degenerate copy of itself in one of these
    forms (``contrast.py``), after that prompt's first sampled pair. Empty: none."""
    out: Path
    """Output dir: pairs.jsonl, dataset/ (HF dataset on disk) and stats.json."""

    @model_validator(mode="after")
    def _inputs_match_mode(self) -> "PairConfig":
        if self.mode == "by_model":
            if self.chosen is None or self.rejected is None:
                raise ValueError("mode 'by_model' needs both `chosen` and `rejected` (generate output dirs)")
            if self.samples is not None:
                raise ValueError("`samples` is for mode 'by_score'; remove it or set mode: by_score")
        else:
            if self.samples is None:
                raise ValueError("mode 'by_score' needs `samples` (a generate output dir with k >= 2 samples)")
            if self.chosen is not None or self.rejected is not None:
                raise ValueError("`chosen`/`rejected` are for mode 'by_model'; use `samples` with mode 'by_score'")
        return self


Relevance = Callable[[list[tuple[list[dict], str]]], list[float]]
"""(prompt messages, answer) items -> each answer's relevance to its prompt (higher: more about the prompt)."""


def make_pairs(cfg: PairConfig, relevance: Relevance | None = None) -> Path:
    """Write ``pairs.jsonl``, ``dataset/`` and ``stats.json`` under ``cfg.out`` and return ``cfg.out``.
    ``relevance`` judges the pairs where ``cfg.relevance_gate`` is set (and is needed then)."""
    if cfg.relevance_gate is not None and relevance is None:
        raise LiteDeltaError("pairing.relevance_gate: no relevance judge was given (the pipeline gives the student)")
    writable_dir(cfg.out, "--out", create=False)
    scorer = checked_scorer(get_scorer(cfg.scorer), cfg.scorer)
    filters = dict.fromkeys(FILTERS, 0)
    stripped: dict[str, int] = {}
    if cfg.mode == "by_model":
        chosen = _answers(_load(cfg.chosen), cfg, stripped, "chosen")
        rejected = _answers(_load(cfg.rejected), cfg, stripped, "rejected")
        pairs, candidates = _pair_by_model(chosen, rejected, cfg, filters)
        inputs = {"chosen": str(cfg.chosen), "rejected": str(cfg.rejected)}
    else:
        pairs, candidates = _pair_by_score(_answers(_load(cfg.samples), cfg, stripped, "samples"), cfg, scorer, filters)
        inputs = {"samples": str(cfg.samples)}

    gate = None
    if cfg.relevance_gate is not None:
        pairs, gate = gate_by_relevance(pairs, relevance, cfg.relevance_gate)
        filters["relevance_gate"] = gate.pop("dropped")
    rows = [_row(c, r, scorer) for c, r in pairs]
    sampled = rows
    if cfg.contrast:
        rows, kinds = with_contrast(rows, cfg.contrast, scorer)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / PAIRS_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    _save_dataset(rows, out / DATASET_DIR)
    stats = _stats(cfg, inputs, pairs, sampled, candidates, filters)
    if cfg.contrast:  # the figures above are the sampled pairs'; pairs.jsonl holds both
        stats["pairs"] = len(rows)
        stats["contrast"] = {"pairs": len(rows) - len(sampled), "kinds": kinds}
    if gate is not None:
        stats["relevance"] = gate
    if any(stripped.values()):
        stats["thinking_stripped"] = stripped
        log.warning("%s answer(s) began with a <think> block: paired on the answer after it (pairing.keep_thinking "
                    "keeps it); generation.chat_template_kwargs {enable_thinking: false} avoids generating it",
                    " + ".join(f"{n} {side}" for side, n in stripped.items() if n))
    write_text(out / STATS_FILE, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    if "warning" in stats:
        log.warning(stats["warning"])
    return out


def gate_by_relevance(pairs: list[tuple[dict, dict]], relevance: Relevance, gate: float) -> tuple[list, dict]:
    """Keep the pairs whose chosen answer is at most ``gate`` less relevant than the rejected one; with what the
    gate saw: relevance means of both sides before and after it, and how many pairs it dropped."""
    items = [(side["messages"], side["completion"]) for pair in pairs for side in pair]
    scores = relevance(items) if items else []
    chosen, rejected = scores[0::2], scores[1::2]
    keep = [i for i in range(len(pairs)) if chosen[i] - rejected[i] >= -gate]
    return [pairs[i] for i in keep], {
        "gate": gate, "dropped": len(pairs) - len(keep),
        "before": {"chosen_mean": _mean(chosen), "rejected_mean": _mean(rejected)},
        "after": {"chosen_mean": _mean([chosen[i] for i in keep]), "rejected_mean": _mean([rejected[i] for i in keep])},
    }


# --- input -----------------------------------------------------------------------------------------

_FIELD_TYPES = {
    "prompt_id": str,
    "index": int,
    "sample": int,
    "messages": list,
    "completion": str,
    "finish_reason": str,
    "prompt_tokens": int,
    "completion_tokens": int,
    "model": str,
}


def _load(path: Path) -> list[dict]:
    """The records of one generate output, checked field by field; sorted by (index, sample, key)."""
    records = read_completions(path)
    if not records:
        raise LiteDeltaError(f"{path} holds no completions: rerun `lite-delta generate` for it")
    for i, record in enumerate(records, 1):
        for field, kind in _FIELD_TYPES.items():
            value = record[field]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise LiteDeltaError(
                    f"{path}: record {i} field `{field}` should be {kind.__name__}, got {value!r:.60}; "
                    "regenerate it with `lite-delta generate`"
                )
        for message in record["messages"]:
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise LiteDeltaError(
                    f"{path}: record {i} has a prompt message without string `role` and `content`; "
                    "regenerate it with `lite-delta generate`"
                )
    return sorted(records, key=lambda r: (r["index"], r["sample"], r["key"]))


# --- pairing ---------------------------------------------------------------------------------------


def _answers(records: list[dict], cfg: PairConfig, stripped: dict, side: str) -> list[dict]:
    """The records with a leading <think> block taken out of each completion, unless cfg.keep_thinking."""
    stripped[side] = 0
    if cfg.keep_thinking:
        return records
    out = []
    for record in records:
        thinking, answer = split_thinking(record["completion"])
        if thinking is not None:
            stripped[side] += 1
            record = {**record, "completion": answer}
        out.append(record)
    return out


def _too_long(record: dict, cfg: PairConfig) -> bool:
    return cfg.max_length is not None and record["prompt_tokens"] + record["completion_tokens"] > cfg.max_length


def _text(record: dict) -> str:
    return record["completion"].strip()


def _pair_by_model(chosen: list[dict], rejected: list[dict], cfg: PairConfig, filters: dict) -> tuple[list, int]:
    """Join on (prompt_id, sample) and apply the mechanical filters in order; the first that fails counts."""
    by_key = {}
    for record in rejected:
        by_key.setdefault((record["prompt_id"], record["sample"]), record)
    chosen_keys = {(r["prompt_id"], r["sample"]) for r in chosen}
    filters["unmatched"] = len(chosen_keys ^ by_key.keys())
    pairs, seen = [], set()
    for c in chosen:  # already in (index, sample) order
        key = (c["prompt_id"], c["sample"])
        if key in seen or key not in by_key:
            continue
        seen.add(key)
        r = by_key[key]
        if not _text(c) or not _text(r):
            filters["empty"] += 1
        elif not cfg.allow_truncated and "length" in (c["finish_reason"], r["finish_reason"]):
            filters["truncated"] += 1
        elif _text(c) == _text(r):
            filters["identical"] += 1
        elif _too_long(c, cfg) or _too_long(r, cfg):
            filters["over_max_length"] += 1
        else:
            pairs.append((c, r))
    return pairs, len(seen)


def _pair_by_score(samples: list[dict], cfg: PairConfig, scorer: Scorer, filters: dict) -> tuple[list, int]:
    """Per prompt: drop unusable samples, then the best-scored answer is chosen and the worst rejected."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in samples:  # already in (index, sample) order, so groups come out in prompt order
        groups[record["prompt_id"]].append(record)
    pairs = []
    for group in groups.values():
        kept = []
        for record in group:
            if not _text(record):
                filters["empty"] += 1
            elif not cfg.allow_truncated and record["finish_reason"] == "length":
                filters["truncated"] += 1
            elif _too_long(record, cfg):
                filters["over_max_length"] += 1
            else:
                kept.append((scorer(record["completion"]), record))
        if len(kept) < 2:
            filters["too_few_samples"] += 1
            continue
        # Ties: the lowest sample number ranks first among equals at the top, the highest at the bottom.
        ranked = sorted(kept, key=lambda sr: (-sr[0], sr[1]["sample"]))
        for n in range(min(cfg.pairs_per_prompt, len(ranked) // 2)):
            (best_score, best), (worst_score, worst) = ranked[n], ranked[-1 - n]
            if best_score - worst_score < cfg.min_margin:
                if n == 0:
                    filters["below_margin"] += 1
                break
            if _text(best) == _text(worst):
                if n == 0:
                    filters["identical"] += 1
                continue
            pairs.append((best, worst))
    return pairs, len(groups)


# --- output ----------------------------------------------------------------------------------------


def _row(chosen: dict, rejected: dict, scorer: Scorer) -> dict:
    """One pair in TRL's conversational preference format, plus provenance."""
    return {
        "prompt": [{"role": m["role"], "content": m["content"]} for m in chosen["messages"]],
        "chosen": [{"role": "assistant", "content": chosen["completion"]}],
        "rejected": [{"role": "assistant", "content": rejected["completion"]}],
        "prompt_id": chosen["prompt_id"],
        "chosen_model": chosen["model"],
        "rejected_model": rejected["model"],
        "chosen_score": scorer(chosen["completion"]),
        "rejected_score": scorer(rejected["completion"]),
    }


def _save_dataset(rows: list[dict], path: Path) -> None:
    """Save as an HF dataset, built beside the old one and swapped in, so a crash leaves one whole copy."""
    import datasets  # heavy import, only needed here

    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features(
        {
            "prompt": datasets.List(message),
            "chosen": datasets.List(message),
            "rejected": datasets.List(message),
            "prompt_id": datasets.Value("string"),
            "chosen_model": datasets.Value("string"),
            "rejected_model": datasets.Value("string"),
            "chosen_score": datasets.Value("float64"),
            "rejected_score": datasets.Value("float64"),
        }
    )
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    columns = {name: [row[name] for row in rows] for name in features}  # keeps the schema when rows is empty
    dataset = datasets.Dataset.from_dict(columns, features=features)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a sub-second save: its bar only clutters the stage output
    try:
        # An empty dataset saved with the default 0 shards cannot be loaded back; one shard can.
        dataset.save_to_disk(str(tmp), num_shards=1 if not rows else None)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _distribution(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:  # nearest-rank percentile
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"mean": sum(ordered) / len(ordered), "p50": rank(0.5), "p90": rank(0.9), "max": ordered[-1]}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _side_stats(records: list[dict]) -> dict:
    texts = [r["completion"] for r in records]
    return {
        "completion_tokens": _distribution([r["completion_tokens"] for r in records]),
        "chars": _distribution([len(t) for t in texts]),
        "scorer_means": {name: _mean([fn(t) for t in texts]) for name, fn in SCORERS.items()},
    }


def _stats(cfg: PairConfig, inputs: dict, pairs: list, rows: list[dict], candidates: int, filters: dict) -> dict:
    chosen_scores = [row["chosen_score"] for row in rows]
    rejected_scores = [row["rejected_score"] for row in rows]
    stats = {
        "mode": cfg.mode,
        "inputs": inputs,
        "pairs": len(rows),
        # by_model: joined (prompt_id, sample) pairs; by_score: prompts.
        "candidates": candidates,
        "filters": filters,
        "settings": {
            "scorer": cfg.scorer,
            "min_margin": cfg.min_margin,
            "pairs_per_prompt": cfg.pairs_per_prompt,
            "allow_truncated": cfg.allow_truncated,
            "max_length": cfg.max_length,
            **({"keep_thinking": True} if cfg.keep_thinking else {}),
            **({"relevance_gate": cfg.relevance_gate} if cfg.relevance_gate is not None else {}),
            **({"contrast": list(cfg.contrast)} if cfg.contrast else {}),
        },
        "chosen": _side_stats([c for c, _ in pairs]),
        "rejected": _side_stats([r for _, r in pairs]),
        "scorer": {
            "name": cfg.scorer,
            "chosen_mean": _mean(chosen_scores),
            "rejected_mean": _mean(rejected_scores),
            "margin_mean": _mean([c - r for c, r in zip(chosen_scores, rejected_scores)]),
        },
    }
    if not rows:
        stats["warning"] = _zero_pairs_warning(filters, candidates)
    return stats


def _zero_pairs_warning(filters: dict, candidates: int) -> str:
    dropped = {name: n for name, n in filters.items() if n}
    if not dropped:
        return "no pairs written: the inputs gave no candidates"
    worst = max(dropped, key=dropped.get)
    detail = ", ".join(f"{name} {n}" for name, n in dropped.items())
    return (
        f"no pairs written from {candidates} candidates: the `{worst}` filter removed the most ({detail}); "
        "check the generate outputs or relax that filter"
    )
