"""`lite-delta run` with the SFT contrast at smoke size: the sft stage, its evaluation and the report rows."""

from __future__ import annotations

import json

from lite_delta.cli import main

SMOKE = ["prompts.n=3", "generation.samples_per_prompt=2", "generation.max_tokens=24", "generation.parallel=4",
         "pairing.min_margin=0", "pairing.pairs_per_prompt=1", "train.max_steps=2", "train.batch_size=2",
         "train.grad_accum=1", "train.max_length=256", "train.warmup_ratio=0", "contrast.sft=true",
         "evaluate.utility.prompts.n=2", "evaluate.utility.samples_per_prompt=2", "evaluate.utility.max_tokens=16",
         "evaluate.utility.engine=transformers",
         # an HF-folder student: its conversion to GGUF has its own end-to-end run (test_hf_student_run); on-policy
         # rounds need the student's GGUF (tests/test_rounds_run.py runs them)
         "student_convert.enabled=false", "rounds.n=1"]


def test_the_sft_contrast_trains_with_dpos_budget_and_reaches_the_report(tmp_path, smollm2_student):
    sets = [x for o in [*SMOKE, f"student={smollm2_student}"] for x in ("--set", o)]
    main(["run", "--runs-dir", str(tmp_path), *sets])
    run = tmp_path / "demo"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "done"
    sft, dpo = json.loads((run / "sft" / "sft.json").read_text()), json.loads((run / "train" / "train.json").read_text())
    assert sft["steps"] == dpo["steps"] == 2
    assert sft["pairs"]["rows"] == dpo["pairs"]["rows"]
    assert sft["config"]["learning_rate"] == dpo["config"]["learning_rate"]
    assert (run / "sft" / "adapter" / "adapter_model.safetensors").is_file()

    summary = json.loads((run / "evaluate" / "utility" / "summary.json").read_text())
    assert set(summary["bars"]) == {"base", "rejected", "chosen", "sft", "tuned"}
    assert {"tuned_minus_sft", "sft_minus_chosen"} <= set(summary)
    sft_eval = json.loads((run / "evaluate" / "utility" / "sft" / "utility.json").read_text())
    assert sft_eval["settings"]["adapter"].endswith("sft/adapter")
    report = (run / "report.md").read_text()
    assert "| SFT on the chosen answers |" in report and "DPO − SFT:" in report and "## The SFT contrast" in report

    # the contrast off: no sft stage, the report keeps the four rows
    main(["run", "--runs-dir", str(tmp_path), *sets, "--set", "contrast.sft=false"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert "sft" not in manifest["stages"] or manifest["stages"]["sft"].get("status") != "running"
    summary = json.loads((run / "evaluate" / "utility" / "summary.json").read_text())
    assert "sft" not in summary["bars"]
    assert "| SFT on the chosen answers |" not in (run / "report.md").read_text()
