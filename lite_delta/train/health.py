"""Training health in plain language: read the step log as it grows, warn once per problem, say what to check.

Pure functions over step records (the dicts written to train_log.jsonl), so they are tested on
synthetic logs and run unchanged inside the trainer's callback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LN2 = math.log(2)  # the DPO sigmoid loss when chosen and rejected are not told apart
STUCK_TOLERANCE = 0.005
STUCK_STEPS = 5
COLLAPSE_LOSS = 0.01
FALLING_STEPS = 5
SIGMOID_LOSSES = ("sigmoid", "sigmoid_norm")  # losses that start at ln 2


@dataclass(frozen=True)
class HealthWarning:
    kind: str  # stuck | both_down | not_finite | collapsed
    step: int
    message: str


def _finite(record: dict) -> bool:
    return all(math.isfinite(v) for k, v in record.items() if k != "step" and isinstance(v, float))


def check(records: list[dict], *, loss_type: str, warmup_steps: int, steps_per_epoch: int,
          already: set[str] = frozenset()) -> list[HealthWarning]:
    """New warnings for the log so far; kinds in `already` were raised before and are not repeated."""
    found: list[HealthWarning] = []
    if not records:
        return found
    last = records[-1]
    step = last["step"]

    def add(kind: str, message: str) -> None:
        if kind not in already and all(w.kind != kind for w in found):
            found.append(HealthWarning(kind, step, message))

    if not _finite(last):
        bad = sorted(k for k, v in last.items() if isinstance(v, float) and not math.isfinite(v))
        add("not_finite", f"step {step}: {', '.join(bad)} became NaN or inf: lower the learning rate, "
                          "and train in bf16 or fp32 rather than fp16 (precision in the train config)")
        return found
    after_warmup = [r for r in records if r["step"] > warmup_steps and "loss" in r]
    if loss_type in SIGMOID_LOSSES and len(after_warmup) >= STUCK_STEPS:
        window = after_warmup[-STUCK_STEPS:]
        if all(abs(r["loss"] - LN2) < STUCK_TOLERANCE for r in window):
            add("stuck", f"step {step}: the loss has sat at 0.693 (ln 2) for {STUCK_STEPS} steps after warm-up: "
                         "nothing is being learned. Check the learning rate (LoRA wants ~1e-5 to 1e-4, far above "
                         "full fine-tuning's) and that chosen and rejected really differ (pairs/stats.json)")
    if len(records) >= FALLING_STEPS and all("rewards/chosen" in r and "rewards/margins" in r for r in records):
        window = records[-FALLING_STEPS:]
        chosen = [r["rewards/chosen"] for r in window]
        margins = [r["rewards/margins"] for r in window]
        if chosen[-1] < 0 and chosen[-1] < chosen[0] and margins[-1] > margins[0] and _mostly_falling(chosen):
            add("both_down", f"step {step}: the chosen reward is falling ({chosen[0]:+.3f} -> {chosen[-1]:+.3f}) "
                             "while the margin rises: both answers are being pushed down, which the paper saw hurt. "
                             "Lower the learning rate or beta, and check that chosen answers are not cut off "
                             "(truncated share in pairs/stats.json)")
    if "loss" in last and last["loss"] < COLLAPSE_LOSS and step <= steps_per_epoch:
        add("collapsed", f"step {step}: the loss is ~0 within the first epoch: the pairs are too easy or degenerate "
                         "(e.g. chosen always longer, or one side empty). Check pairs/stats.json and a few pairs; "
                         "raise pairing.min_margin or lower the learning rate")
    return found


def _mostly_falling(values: list[float]) -> bool:
    drops = sum(b < a for a, b in zip(values, values[1:]))
    return drops >= (len(values) - 1) * 3 / 4
