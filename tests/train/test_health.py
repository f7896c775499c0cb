"""Training-health warnings on synthetic step logs: each fires on its pattern and stays quiet otherwise."""

from __future__ import annotations

import math

from lite_delta.train.health import LN2, check


def log(losses, chosen=None, margins=None):
    records = []
    for i, loss in enumerate(losses):
        r = {"step": i + 1, "loss": loss}
        if chosen is not None:
            r["rewards/chosen"] = chosen[i]
            r["rewards/margins"] = margins[i]
        records.append(r)
    return records


def kinds(records, **kw):
    args = dict(loss_type="sigmoid_norm", warmup_steps=2, steps_per_epoch=100) | kw
    return [w.kind for w in check(records, **args)]


def test_healthy_run_raises_nothing():
    losses = [LN2 - 0.01 * i for i in range(20)]
    chosen = [0.01 * i for i in range(20)]
    margins = [0.02 * i for i in range(20)]
    for n in range(1, 21):
        assert kinds(log(losses[:n], chosen[:n], margins[:n])) == []


def test_loss_stuck_at_ln2_after_warmup():
    stuck = log([LN2] * 7)
    assert kinds(stuck) == ["stuck"]
    assert kinds(stuck, warmup_steps=5) == [], "still warming up: only 2 steps after warm-up"
    assert kinds(stuck, loss_type="ipo") == [], "IPO does not start at ln 2"
    assert kinds(log([LN2] * 4 + [0.6] * 3)) == []
    (w,) = check(stuck, loss_type="sigmoid", warmup_steps=0, steps_per_epoch=10)
    assert "learning rate" in w.message and w.step == 7


def test_both_sides_pushed_down():
    chosen = [-0.01, -0.05, -0.1, -0.2, -0.3]
    margins = [0.0, 0.1, 0.2, 0.3, 0.5]
    assert kinds(log([0.6] * 5, chosen, margins)) == ["both_down"]
    assert kinds(log([0.6] * 5, [0.1, 0.2, 0.3, 0.4, 0.5], margins)) == [], "chosen rising is fine"
    assert kinds(log([0.6] * 5, chosen, margins[::-1])) == [], "margin not rising: a different problem"


def test_not_finite_names_the_field():
    records = log([0.69, 0.5, math.nan])
    (w,) = check(records, loss_type="sigmoid", warmup_steps=0, steps_per_epoch=10)
    assert w.kind == "not_finite" and "loss" in w.message and "bf16" in w.message
    records[-1]["loss"] = 0.4
    records[-1]["rewards/margins"] = math.inf
    assert kinds(records) == ["not_finite"]


def test_loss_collapsing_early_but_not_late():
    assert kinds(log([0.6, 0.2, 0.005])) == ["collapsed"]
    assert kinds(log([0.6, 0.2, 0.005]), steps_per_epoch=2) == [], "after an epoch a low loss is expected"


def test_each_warning_once():
    records = log([LN2] * 8)
    first = check(records[:7], loss_type="sigmoid", warmup_steps=0, steps_per_epoch=100)
    assert [w.kind for w in first] == ["stuck"]
    assert check(records, loss_type="sigmoid", warmup_steps=0, steps_per_epoch=100, already={"stuck"}) == []
