"""The paired bootstrap, below the stages: evaluate's base-vs-tuned comparison and the meter's teacher delta.

Two sets of scores on the same items are paired by position; each draw resamples item positions with
replacement (within groups, for a macro average such as MMLU's over subjects), recomputes both scores
and takes the difference. The 2.5 and 97.5 percentiles of the differences are the 95% interval.
"""

from __future__ import annotations

import numpy as np

N_BOOTSTRAP = 10_000


def group_mean(scores: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Mean over the last axis, or the mean of per-group means (macro) when groups are given."""
    if groups is None:
        return scores.mean(axis=-1)
    return np.mean([scores[..., groups == g].mean(axis=-1) for g in np.unique(groups)], axis=0)


def resample_indices(n: int, groups: np.ndarray | None, rng: np.random.Generator, b: int) -> np.ndarray:
    """(b, n) resampled item positions; within each group when there are groups (stratified bootstrap)."""
    if groups is None:
        return rng.integers(0, n, size=(b, n))
    idx = np.empty((b, n), dtype=np.int64)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        idx[:, members] = members[rng.integers(0, len(members), size=(b, len(members)))]
    return idx


def paired_difference(a, b, *, seed: int = 0, draws: int = N_BOOTSTRAP) -> dict:
    """mean(a) - mean(b) over paired items, its paired-bootstrap 95% CI and the differences drawn."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired scores need two equal, non-empty 1-D arrays (got {a.shape} and {b.shape})")
    idx = resample_indices(len(a), None, np.random.default_rng(seed), draws)
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    return {"diff": float(a.mean() - b.mean()),
            "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))], "draws": diffs}
