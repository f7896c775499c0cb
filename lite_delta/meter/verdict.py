"""The meter's plain-language verdict on a delta (chosen minus rejected) and its paired-bootstrap 95% CI.

- clear positive: the whole CI is above 0 and the delta is at least ``min_delta``;
- negative: the whole CI is below 0 — the teachers are the wrong way round;
- too small to measure at this size: anything else.

Why (BRIEF §1, Geng et al. 2025): with no delta (3-section vs 3-section answers) DPO taught nothing
(6.1 sections against the student's 5.9), a real delta taught far past the data (3 over 2 sections: 81.1),
and the reversed pair (2 over 3) pushed the student down (1.1): a wrong-way delta does harm, so the
run stops. Gains track the size of the delta up to a plateau, so a delta the meter cannot tell from 0
will teach little. ``min_delta`` (5 points by default) is this project's judgement, not the paper's: about
the smallest delta that ~100 paired items per task can tell from noise.
"""

from __future__ import annotations

POSITIVE, TOO_SMALL, NEGATIVE = "positive", "too_small", "negative"

ADVICE = {
    POSITIVE: "clear positive delta: the chosen teacher is measurably better; pairs from these teachers carry a signal",
    TOO_SMALL: "delta too small to measure at this size: pairs will teach little; choose a weaker rejected teacher "
               "(e.g. a harder derived quant, or a smaller model) or a stronger chosen one, or raise the limit",
    NEGATIVE: "negative delta: the rejected teacher scores higher, so the teachers are the wrong way round; swap them",
}


def verdict(diff: float, ci95: tuple[float, float] | list[float], min_delta: float) -> str:
    lo, hi = ci95
    if hi < 0:
        return NEGATIVE
    if lo > 0 and diff >= min_delta:
        return POSITIVE
    return TOO_SMALL


def thresholds_text(min_delta: float, unit: str = "points", scale: float = 100.0) -> str:
    return (f"clear positive: 95% CI above 0 and delta >= {min_delta * scale:g} {unit}; negative: 95% CI below 0; "
            "otherwise too small to measure at this size")
