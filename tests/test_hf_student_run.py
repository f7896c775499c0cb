"""`lite-delta run` with a transformers student folder at smoke size: convert → train → export → llama.cpp evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lite_delta.cli import main
from lite_delta.models.refs import model_identity

SMOKE = ["prompts.n=3", "generation.samples_per_prompt=2", "generation.max_tokens=16", "generation.parallel=4",
         "pairing.min_margin=0", "pairing.pairs_per_prompt=1", "train.max_steps=1", "train.batch_size=2",
         "train.grad_accum=1", "train.max_length=128", "train.warmup_ratio=0", "train.precompute_ref_log_probs=false",
         "contrast.sft=false", "evaluate.utility.prompts.n=2", "evaluate.utility.samples_per_prompt=2",
         "evaluate.utility.max_tokens=8", "evaluate.utility.parallel=4",
         "rounds.n=1"]  # rounds sample a GGUF student in llama.cpp: tests/test_rounds_run.py


@pytest.fixture(scope="module")
def hf_student(tmp_path_factory, smollm2_student) -> Path:
    """A 2-layer Llama folder with random bf16 weights and SmolLM2's tokenizer: a Hub student in miniature."""
    from lite_delta.models.random_student import write_random_student

    return write_random_student(tmp_path_factory.mktemp("hf_student") / "tiny-llama", tokenizer_from=smollm2_student)


def test_a_transformers_student_is_converted_exported_and_evaluated_on_llama_cpp(tmp_path, hf_student, monkeypatch):
    monkeypatch.setenv("LITE_DELTA_CACHE", str(tmp_path / "cache"))
    sets = [x for o in [*SMOKE, f"student={hf_student}"] for x in ("--set", o)]
    main(["run", "--runs-dir", str(tmp_path / "runs"), *sets])
    run = tmp_path / "runs" / "demo"
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s for s, r in manifest["stages"].items() if r["status"] == "done"] == [
        "generate", "pair", "train", "convert", "export", "evaluate", "report"]

    record = json.loads((run / "convert" / "convert.json").read_text())
    gguf, eval_gguf = Path(record["gguf"]), Path(record["eval_gguf"])
    assert gguf.parent == eval_gguf.parent == tmp_path / "cache" / "converted"
    assert gguf.is_file() and eval_gguf.is_file() and eval_gguf.name.endswith(".Q8_0.gguf")
    assert record["conversion"]["reused"] is False and record["settings"]["eval_quant"] == "Q8_0"

    export = json.loads((run / "export" / "export.json").read_text())
    assert (run / "export" / export["base"]).samefile(gguf) or \
        export["base_identity"] == model_identity(gguf)  # the adapter and the merge on the 16-bit conversion
    assert export["base_check"].startswith("weights:")
    for name in ("adapter.gguf", "merged-f16.gguf", "merged-Q4_K_M.gguf", "Modelfile", "Modelfile.merged", "README.md"):
        assert (run / "export" / name).is_file(), name

    for side, adapter in (("base", None), ("tuned", run / "export" / "adapter.gguf")):
        settings = json.loads((run / "evaluate" / "utility" / side / "utility.json").read_text())["settings"]
        assert settings["engine"] == "llama.cpp" and settings["model"] == str(eval_gguf)
        assert settings["adapter"] == (str(adapter) if adapter else None)
    assert "## The tuned student in llama.cpp and Ollama" in (run / "report.md").read_text()

    # A rerun skips every stage; the convert stage rerun alone finds both files in the cache.
    stamps = {p: p.stat().st_mtime_ns for p in (gguf, eval_gguf)}
    main(["run", "--runs-dir", str(tmp_path / "runs"), *sets])
    main(["run", "--runs-dir", str(tmp_path / "runs"), *sets, "--from", "convert", "--until", "convert"])
    again = json.loads((run / "convert" / "convert.json").read_text())
    assert again["conversion"]["reused"] is True and again["eval_quantization"]["reused"] is True
    assert {p: p.stat().st_mtime_ns for p in (gguf, eval_gguf)} == stamps
