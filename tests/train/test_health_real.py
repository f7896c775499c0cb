"""Training health on real DPO runs of the demo's student (SmolLM2-135M, real TRL/PEFT on the CPU, smoke size):
over-trained as the old demo was, the run warns in train.json and in the report, its greedy probe included;
trained gently, it is quiet."""

from __future__ import annotations

import json

import pytest

from lite_delta.config import TrainConfig
from lite_delta.report import training_section
from lite_delta.train.stage import train

TOPICS = ("keeping houseplants alive", "packing for a trip", "saving money on food", "sleeping better",
          "learning to cook", "starting to run", "keeping a clean kitchen", "studying for an exam")
# chosen: a list with content; rejected: one flat sentence; the demo's pairs in miniature
ROWS = [
    {"prompt": [{"role": "user", "content": f"Give me some tips for {topic}."}],
     "chosen": [{"role": "assistant", "content": f"Here are some tips for {topic}:\n\n1. **Plan ahead**: decide what "
                 "matters most before you start.\n2. **Keep it simple**: do one small thing every day.\n3. **Ask "
                 "for help**: a friend can keep you on track."}],
     "rejected": [{"role": "assistant", "content": f"Just try your best with {topic} and it will be fine."}]}
    for topic in TOPICS
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("health") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _run(smollm2_student, pairs, out, learning_rate: float, steps: int, probe_steps: int):
    cfg = TrainConfig(student=smollm2_student, pairs=pairs, out=out, loss="sigmoid_norm", beta=5.0,
                      learning_rate=learning_rate, lr_scheduler="constant", warmup_ratio=0.0, max_steps=steps,
                      batch_size=4, grad_accum=1, max_length=160, lora_r=16, lora_alpha=32, save_steps=1000,
                      precompute_ref_log_probs=True, probe_prompts=len(TOPICS), probe_steps=probe_steps)
    out = train(cfg, progress=False)
    return json.loads((out / "train.json").read_text()), out


def test_an_over_trained_real_run_warns_and_a_gentle_one_is_quiet(smollm2_student, pairs, tmp_path):
    # 8 pairs, 12 steps at 10x the demo's old learning rate: the margins run away as they did in the demo
    summary, out = _run(smollm2_student, pairs, tmp_path / "hot", learning_rate=5e-3, steps=12, probe_steps=6)
    kinds = {w["kind"] for w in summary["health_warnings"]}
    assert kinds & {"runaway_margin", "rejected_plunge", "saturated"}, summary["last_log"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any(set(r.get("warnings", [])) & kinds for r in log), "the step log marks the step that warned"
    # the greedy probe: the student's own answers, adapter off at the start, then at steps 6 and 12
    probes = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert [(p["step"], p["adapter"]) for p in probes] == [(0, "off"), (6, "on"), (12, "on")]
    assert probes[0]["degenerate"] == 0 and probes[-1]["degenerate"] >= 2, [a["answer"][:60] for a in probes[-1]["answers"]]
    assert "greedy_broken" in kinds and summary["probe"]["steps"][-1] == {"step": 12, "degenerate": probes[-1]["degenerate"]}
    assert [r.get("probe_degenerate") for r in log if r["step"] in (6, 12)] == [p["degenerate"] for p in probes[1:]]
    section = "\n".join(training_section(tmp_path / "hot_run", tmp_path / "figures") or [])
    assert section == "", "no train.json there: no section"
    section = "\n".join(training_section_for(out, tmp_path / "hot_run"))
    assert "no warnings" not in section and "early stopping" in section
    assert f"Greedy probe ({len(TOPICS)} prompts" in section and "greedy answers to the probe prompts" in section

    gentle, _ = _run(smollm2_student, pairs, tmp_path / "gentle", learning_rate=2e-5, steps=4, probe_steps=4)
    assert gentle["health_warnings"] == [], gentle["health_warnings"]
    assert gentle["probe"]["steps"] == [{"step": 4, "degenerate": 0}] and gentle["probe"]["reference_degenerate"] == 0
    assert gentle["last_log"]["rewards/margins"] < summary["last_log"]["rewards/margins"]


def test_select_probe_stops_at_the_broken_probe_and_keeps_the_step_before(smollm2_student, pairs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lite_delta.train.probe import GreedyProbe, probe_rows
    from lite_delta.train.sequences import end_token_ids

    cfg = TrainConfig(student=smollm2_student, pairs=pairs, out=tmp_path / "stop", loss="sigmoid_norm", beta=5.0,
                      learning_rate=5e-3, lr_scheduler="constant", warmup_ratio=0.0, max_steps=12, batch_size=4,
                      grad_accum=1, max_length=160, save_steps=1000, precompute_ref_log_probs=True,
                      probe_prompts=len(TOPICS), probe_steps=3, select="probe")
    out = train(cfg, progress=False)
    summary = json.loads((out / "train.json").read_text())
    probes = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    selected = summary["selected"]
    assert selected["stopped_at"] == probes[-1]["step"] == summary["steps"] < 12, "stopped early, at the probe"
    assert "greedy_broken" in {w["kind"] for w in summary["health_warnings"]}
    assert selected["step"] == selected["stopped_at"] - 3
    # the saved adapter answers as the kept step did (adapter off at step 0: LoRA starts as the identity)
    kept = next(p for p in probes if p["step"] == selected["step"] and (p["adapter"] == "on" or p["step"] == 0))
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_student), str(out / "adapter"))
    rows = probe_rows([{"prompt": r["prompt"]} for r in ROWS], [], len(TOPICS))
    again = GreedyProbe(rows, tokenizer, tmp_path / "again.jsonl", end_ids=end_token_ids(tokenizer, smollm2_student))
    assert [a["answer"] for a in again.run(model, selected["step"])["answers"]] == [a["answer"] for a in kept["answers"]]
    section = "\n".join(training_section_for(out, tmp_path / "run"))
    assert f"Training stopped at step {selected['stopped_at']}" in section


def training_section_for(out, run_dir):
    """The report's training section for a run folder holding this training's train.json and step log."""
    (run_dir / "train").mkdir(parents=True)
    for name in ("train.json", "train_log.jsonl"):
        (run_dir / "train" / name).write_text((out / name).read_text())
    return training_section(run_dir, run_dir / "figures")


def test_contrast_pairs_train_with_the_reward_rules_off_and_the_report_says_so(smollm2_student, tmp_path):
    from lite_delta.pairs.contrast import KINDS, contrast_row
    from lite_delta.utility_scorers import list_item_count

    # each pair and, after it, a contrast pair: its chosen answer against a degenerate copy (pairs/contrast.py)
    rows = []
    for i, row in enumerate(ROWS):
        rows += [row, contrast_row({**row, "prompt_id": str(i)}, KINDS, list_item_count)]
    assert all(rows[1::2]) and {r["contrast"] for r in rows[1::2]} <= set(KINDS)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the hot run's settings: without contrast pairs its margins run away (the test above)
    summary, out = _run(smollm2_student, path, tmp_path / "hot", learning_rate=5e-3, steps=6, probe_steps=6)
    assert summary["contrast_pairs"] == len(ROWS) and summary["pairs"]["rows"] == 2 * len(ROWS)
    kinds = {w["kind"] for w in summary["health_warnings"]}
    assert not kinds & {"both_down", "runaway_margin", "rejected_plunge", "chosen_sunk"}, kinds
    assert summary["probe"]["steps"][-1]["step"] == 6, "the greedy probe still watches"
    section = "\n".join(training_section_for(out, tmp_path / "run"))
    assert f"{len(ROWS)} of the {2 * len(ROWS)} training pairs are contrast pairs" in section
    assert "not applied" in section and "greedy probe" in section
