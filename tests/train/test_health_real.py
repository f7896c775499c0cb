"""Training health on real DPO runs of the demo's student (SmolLM2-135M, real TRL/PEFT on the CPU, smoke size):
over-trained as the old demo was, the run warns in train.json and in the report; trained gently, it is quiet."""

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


def _run(smollm2_student, pairs, out, learning_rate: float, steps: int):
    cfg = TrainConfig(student=smollm2_student, pairs=pairs, out=out, loss="sigmoid_norm", beta=5.0,
                      learning_rate=learning_rate, lr_scheduler="constant", warmup_ratio=0.0, max_steps=steps,
                      batch_size=4, grad_accum=1, max_length=160, lora_r=16, lora_alpha=32, save_steps=1000,
                      precompute_ref_log_probs=True)
    out = train(cfg, progress=False)
    return json.loads((out / "train.json").read_text()), out


def test_an_over_trained_real_run_warns_and_a_gentle_one_is_quiet(smollm2_student, pairs, tmp_path):
    # 8 pairs, 12 steps at 10x the demo's old learning rate: the margins run away as they did in the demo
    summary, out = _run(smollm2_student, pairs, tmp_path / "hot", learning_rate=5e-3, steps=12)
    kinds = {w["kind"] for w in summary["health_warnings"]}
    assert kinds & {"runaway_margin", "rejected_plunge", "saturated"}, summary["last_log"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any(set(r.get("warnings", [])) & kinds for r in log), "the step log marks the step that warned"
    section = "\n".join(training_section(tmp_path / "hot_run", tmp_path / "figures") or [])
    assert section == "", "no train.json there: no section"
    run_dir = tmp_path / "hot_run"
    (run_dir / "train").mkdir(parents=True)
    for name in ("train.json", "train_log.jsonl"):
        (run_dir / "train" / name).write_text((out / name).read_text())
    section = "\n".join(training_section(run_dir, tmp_path / "figures"))
    assert "no warnings" not in section and "early stopping" in section

    gentle, _ = _run(smollm2_student, pairs, tmp_path / "gentle", learning_rate=2e-5, steps=4)
    assert gentle["health_warnings"] == [], gentle["health_warnings"]
    assert gentle["last_log"]["rewards/margins"] < summary["last_log"]["rewards/margins"]
