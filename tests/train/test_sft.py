"""The SFT contrast on the CPU with the real TRL SFTTrainer: it imitates the chosen answers only, with DPO's budget."""

from __future__ import annotations

import json

import pytest
import torch

from lite_delta.config import TrainConfig
from lite_delta.train.sft import SUMMARY, sft_rows, train_sft

ROWS = [
    {"prompt": [{"role": "user", "content": f"List some {thing}."}],
     "chosen": [{"role": "assistant", "content": f"- one {thing}\n- two {thing}\n- three {thing}"}],
     "rejected": [{"role": "assistant", "content": f"Some {thing}."}]}
    for thing in ("fruits", "birds", "tools", "colours", "rivers", "games")
]


def test_sft_rows_hold_the_chosen_answer_and_never_the_rejected():
    rows = sft_rows(ROWS)
    assert [r["completion"] for r in rows] == [r["chosen"] for r in ROWS]
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    assert not any("Some " in json.dumps(r["completion"]) for r in rows)


def _mean_logprob(model, tokenizer, prompt, answer) -> float:
    p = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    p = list(p["input_ids"] if hasattr(p, "keys") else p)
    a = tokenizer.encode(answer, add_special_tokens=False)
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return logp[len(p) - 1:].gather(-1, ids[0, len(p):, None]).mean().item()


def test_sft_raises_the_chosen_answers_likelihood_with_dpo_settings(tmp_path, tiny_student):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = TrainConfig(student=tiny_student, pairs=pairs, out=tmp_path / "sft", batch_size=2, grad_accum=1,
                      learning_rate=5e-3, max_length=128, lora_r=8, lora_alpha=16, warmup_ratio=0.0,
                      lr_scheduler="constant", epochs=2)
    out = train_sft(cfg, progress=False)
    summary = json.loads((out / SUMMARY).read_text())
    # DPO's budget: 6 rows, batch 2, 2 epochs -> 6 steps, each chosen answer seen twice
    assert summary["steps"] == 6 and summary["passes_over_chosen"] == 2.0
    assert summary["pairs"]["rows"] == len(ROWS) and summary["chosen_tokens_per_pass"] > 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all("rewards/margins" not in r for r in log)
    assert log[-1]["loss"] < log[0]["loss"], "the imitation loss falls"

    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_student, dtype=torch.float32)
    row = ROWS[0]
    before = _mean_logprob(base, tokenizer, row["prompt"], row["chosen"][0]["content"])
    tuned = PeftModel.from_pretrained(base, str(out / "adapter"))
    after = _mean_logprob(tuned, tokenizer, row["prompt"], row["chosen"][0]["content"])
    assert after > before + 0.5, (before, after)


def test_the_sft_stage_runs_only_beside_a_dpo_run():
    from lite_delta.config import load_recipe
    from lite_delta.pipeline import default_recipe_path, stage_settings

    demo = load_recipe(default_recipe_path())
    assert demo.contrast.sft and stage_settings(demo)["sft"]["contrast"] == {"sft": True}
    assert stage_settings(load_recipe(default_recipe_path(), ["train=null", "evaluate=null"]))["sft"] is None
    assert stage_settings(load_recipe(default_recipe_path(), ["contrast.sft=false"]))["sft"] is None
