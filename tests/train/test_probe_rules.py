"""The greedy probe's pure parts: which prompts it asks, and when its answers make health warn."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lite_delta.config import TrainConfig
from lite_delta.train.health import PROBE_MIN_ANSWERS, check_probe
from lite_delta.train.probe import probe_every, probe_rows
from lite_delta.train.split import prompt_key


def row(text: str, **extra) -> dict:
    return {"prompt": [{"role": "user", "content": text}], "chosen": [], "rejected": [], **extra}


def probe(step: int, degenerate: int, n: int = 8) -> dict:
    answers = [{"prompt": f"p{i}", "answer": "1.1.1.1" if i < degenerate else "A real answer with words.",
                "degenerate": "few_words" if i < degenerate else None} for i in range(n)]
    return {"step": step, "adapter": "on", "degenerate": degenerate, "prompts": n, "answers": answers}


def test_held_out_prompts_come_first_then_training_ones_spread_and_distinct():
    rows = [row(f"q{i}") for i in range(10) for _ in range(2)]  # two pairs per prompt
    held = [row("h0"), row("h0"), row("h1")]
    picked = [r["prompt"][0]["content"] for r in probe_rows(rows, held, 5)]
    assert picked == ["h0", "h1", "q0", "q3", "q6"]
    assert [r["prompt"][0]["content"] for r in probe_rows(rows, [], 3)] == ["q0", "q3", "q6"]
    assert len(probe_rows(rows[:4], [], 8)) == 2, "no more prompts than there are"
    kw = probe_rows([row("q", chat_template_kwargs={"enable_thinking": False})], [], 1)[0]
    assert kw["chat_template_kwargs"] == {"enable_thinking": False} and "chosen" not in kw
    assert prompt_key(kw) == prompt_key(row("q", chat_template_kwargs={"enable_thinking": False}))


def test_probe_every_defaults_to_a_few_per_run():
    assert probe_every(None, 18) == 3 and probe_every(None, 4) == 1 and probe_every(5, 18) == 5


def test_greedy_broken_fires_past_the_reference_and_not_before():
    reference = probe(0, 1) | {"adapter": "off"}
    assert check_probe(probe(6, 2), reference) == [], "one more odd answer is not a collapse"
    (w,) = check_probe(probe(12, 1 + PROBE_MIN_ANSWERS), reference)
    assert w.kind == "greedy_broken" and w.step == 12
    assert "3 of 8" in w.message and "against 1 with the adapter off" in w.message and "'1.1.1.1'" in w.message
    assert check_probe(probe(12, 8), reference, already={"greedy_broken"}) == [], "said once"
    assert check_probe(probe(12, 8), None) == [], "no reference: nothing to compare with"
    big = probe(0, 0, n=40) | {"adapter": "off"}
    assert check_probe(probe(4, 9, n=40), big) == [] and check_probe(probe(4, 10, n=40), big), "a quarter of 40"


def test_probe_settings_are_checked():
    TrainConfig(student="s", pairs="p", out="o", probe_prompts=8, probe_steps=3)
    for bad in ({"probe_prompts": -1}, {"probe_prompts": 65}, {"probe_steps": 0}):
        with pytest.raises(ValidationError):
            TrainConfig(student="s", pairs="p", out="o", **bad)
    assert "probe_prompts" not in TrainConfig(student="s", pairs="p", out="o").model_dump(), "off: no stage key change"
    with pytest.raises(ValidationError, match="select: probe .* set probe_prompts"):
        TrainConfig(student="s", pairs="p", out="o", select="probe")
    assert TrainConfig(student="s", pairs="p", out="o", select="probe", probe_prompts=4).select == "probe"


def test_a_resumed_probe_keeps_what_it_asked_up_to_the_checkpoint(tmp_path):
    import json

    from lite_delta.train.probe import GreedyProbe

    rows = probe_rows([row("q0"), row("q1")], [], 2)
    probe = GreedyProbe(rows, tokenizer=None, path=tmp_path / "probe.jsonl", end_ids=set())
    other = GreedyProbe(probe_rows([row("other")], [], 1), tokenizer=None, path=tmp_path / "x", end_ids=set())
    lines = [{"step": 0, "adapter": "off", "key": probe.key, "degenerate": 0, "prompts": 2},
             *({"step": s, "adapter": "on", "key": probe.key, "degenerate": 1, "prompts": 2} for s in (3, 6, 9)),
             {"step": 3, "adapter": "on", "key": other.key, "degenerate": 2, "prompts": 1}]
    (tmp_path / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    probe.resume(6)  # the checkpoint of step 6: the probe of step 9 is redone, another probe's lines never count
    assert [(r["step"], r["adapter"]) for r in probe.records] == [(0, "off"), (3, "on"), (6, "on")]
    assert probe.reference["step"] == 0
    assert [json.loads(line) for line in (tmp_path / "probe.jsonl").read_text().splitlines()] == probe.records
    probe.resume(0)  # a fresh start: only the reference (the adapter off does not change) is kept
    assert probe.records == [lines[0]] and probe.summary()["steps"] == []
    assert GreedyProbe(rows, None, tmp_path / "none.jsonl", end_ids=set()).reference is None
