"""`lite-delta run` with two on-policy rounds at smoke size: the real SmolLM2 GGUF answers round 2's share of
the prompts with round 1's adapter through llama.cpp, those answers are paired, and DPO goes on from that adapter,
with it as the reference; export, evaluation and the report use the last round's adapter."""

from __future__ import annotations

import filecmp
import json

from safetensors.numpy import load_file

from lite_delta.cli import main
from lite_delta.prompts import load_prompts

SMOKE = ["prompts.n=6", "generation.samples_per_prompt=2", "generation.max_tokens=24", "generation.parallel=8",
         "pairing.min_margin=0", "pairing.pairs_per_prompt=1", "train.batch_size=2", "train.grad_accum=1",
         "train.max_length=256", "train.warmup_ratio=0", "train.learning_rate=5e-3", "contrast.sft=true",
         "export.merge=false", "rounds.n=2", "rounds.max_steps=[2, 1]",
         "evaluate.utility.prompts.n=2", "evaluate.utility.samples_per_prompt=2", "evaluate.utility.max_tokens=16"]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _log(train_dir):
    return [r for r in _jsonl(train_dir / "train_log.jsonl") if "loss" in r]


def test_two_rounds_sample_with_the_last_adapter_and_train_on_from_it(tmp_path):
    sets = [x for o in SMOKE for x in ("--set", o)]
    main(["run", "--runs-dir", str(tmp_path), *sets])
    run = tmp_path / "demo"
    manifest = json.loads((run / "manifest.json").read_text())
    assert {s: manifest["stages"][s]["status"] for s in ("train", "rounds", "sft", "export", "evaluate")} == \
        dict.fromkeys(("train", "rounds", "sft", "export", "evaluate"), "done")

    # the two shares: disjoint, together the recipe's prompts; round 2 answered with round 1's adapter
    prompts, _ = load_prompts("builtin:demo", n=6, sample="random", seed=0)
    first = {r["prompt_id"] for r in _jsonl(run / "generate" / "samples" / "completions.jsonl")}
    r2 = run / "rounds" / "r2"
    second = {r["prompt_id"] for r in _jsonl(r2 / "generate" / "completions.jsonl")}
    assert first.isdisjoint(second) and first | second == {p.prompt_id for p in prompts}
    assert len(first) == len(second) == 3
    generation = json.loads((r2 / "generate" / "generation.json").read_text())
    assert generation["adapter"].endswith("student-adapter.gguf") and "adapter" in generation["model_identity"]
    assert (r2 / "pairs" / "pairs.jsonl").is_file()

    # round 2 goes on from round 1's adapter, which is its reference: policy and reference agree at its first
    # step (rewards 0), where the bare student would not (round 1 moved it: its rewards at its last step)
    r1_train, r2_train = json.loads((run / "train" / "train.json").read_text()), json.loads(
        (r2 / "train" / "train.json").read_text())
    assert r1_train["steps"] == 2 and r2_train["steps"] == 1
    assert r2_train["config"]["init_adapter"] == str(run / "train" / "adapter")
    r1_last, r2_first = _log(run / "train")[-1], _log(r2 / "train")[0]
    moved = max(abs(r1_last["rewards/chosen"]), abs(r1_last["rewards/rejected"]))
    assert moved > 1e-2
    assert abs(r2_first["rewards/chosen"]) < moved / 100 and abs(r2_first["rewards/rejected"]) < moved / 100
    w1 = load_file(str(run / "train" / "adapter" / "adapter_model.safetensors"))
    w2 = load_file(str(r2 / "train" / "adapter" / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys() and not (r2 / "train" / "adapter" / "ref").exists()  # TRL's reference copy
    b = next(k for k in w1 if "lora_B" in k and abs(w1[k]).max() > 0)
    assert 0 < abs(w2[b] - w1[b]).max() < abs(w1[b]).max()  # on from round 1's weights, not from zero

    # the later stages use the last round's adapter; SFT saw every round's pairs, the steps of both rounds
    exported = run / "export" / "adapter.gguf"  # round 2's, not round 1's (which round 2 sampled with)
    assert exported.is_file() and not filecmp.cmp(exported, r2 / "student-adapter.gguf", shallow=False)
    tuned = json.loads((run / "evaluate" / "utility" / "tuned" / "utility.json").read_text())
    assert tuned["settings"]["adapter"] == str(exported)
    sft = json.loads((run / "sft" / "sft.json").read_text())
    rows = len(_jsonl(run / "pairs" / "pairs.jsonl")) + len(_jsonl(r2 / "pairs" / "pairs.jsonl"))
    assert sft["pairs"]["rows"] == rows and sft["steps"] == 3
    report = (run / "report.md").read_text()
    assert "On-policy rounds" in report and "the student's own answers after round 1" in report

    # a changed round length reruns the rounds and what follows, never round 1
    main(["run", "--runs-dir", str(tmp_path), *sets, "--set", "rounds.max_steps=[2, 2]", "--until", "rounds"])
    again = json.loads((run / "manifest.json").read_text())
    assert again["stages"]["train"]["finished"] == manifest["stages"]["train"]["finished"]
    assert json.loads((r2 / "train" / "train.json").read_text())["steps"] == 2
