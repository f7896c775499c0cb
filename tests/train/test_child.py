"""`lite-delta run` trains (DPO and the SFT contrast) in a child process: its GPU memory is returned when it
exits, Unsloth's process-wide patches never reach the process that evaluates, and a failure in the child
comes back as one line with exit 2."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from lite_delta.config import TrainConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.train.launch import ERROR_LOG, train_in_child

SMOKE = ["prompts.n=3", "generation.samples_per_prompt=2", "generation.max_tokens=24", "generation.parallel=4",
         "pairing.min_margin=0", "pairing.pairs_per_prompt=1", "train.max_steps=2", "train.batch_size=2",
         "train.grad_accum=1", "train.max_length=256", "train.warmup_ratio=0", "train.backend=unsloth",
         "contrast.sft=true", "evaluate.utility.prompts.n=2", "evaluate.utility.samples_per_prompt=2",
         "evaluate.utility.max_tokens=16", "evaluate.utility.engine=transformers",
         # an HF-folder student: its conversion to GGUF has its own end-to-end run (test_hf_student_run); on-policy
         # rounds need the student's GGUF (tests/test_rounds_run.py runs them)
         "student_convert.enabled=false", "rounds.n=1"]

# Methods of transformers' (and TRL's) classes whose code comes from Unsloth's files (its packages, or the
# unsloth_compiled_cache it writes): what its patches leave behind (on a GPU it replaces the Llama/Qwen2
# forwards, on its CPU fallback TrainingArguments.__post_init__ and Trainer.create_accelerator_and_postprocess).
FOREIGN_CODE = """
import importlib, inspect, os, sys

def foreign_code():
    found = []
    for name in ("transformers.training_args", "transformers.trainer", "transformers.modeling_utils",
                 "transformers.models.llama.modeling_llama", "transformers.models.qwen2.modeling_qwen2",
                 "trl.trainer.dpo_trainer", "trl.trainer.sft_trainer"):
        module = importlib.import_module(name)
        for cls in [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == name]:
            for attr, fn in vars(cls).items():
                code = getattr(fn, "__code__", None)
                if code is not None and "unsloth" in code.co_filename.lower():
                    found.append(f"{name}.{cls.__name__}.{attr} from {code.co_filename}")
    return found

def unsloth_modules():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("unsloth", "unsloth_zoo"))
"""

RUN_AND_INSPECT = FOREIGN_CODE + """
import json
from lite_delta.pipeline import default_recipe_path, run_recipe
run_recipe(default_recipe_path(), runs_dir=sys.argv[1], overrides=sys.argv[2:])
print(json.dumps({"unsloth_modules": unsloth_modules(), "foreign": foreign_code()}))
"""

TRAIN_IN_PROCESS_AND_INSPECT = FOREIGN_CODE + """
import json
from lite_delta.config import TrainConfig
from lite_delta.train.stage import train
train(TrainConfig.model_validate_json(open(sys.argv[1]).read()), progress=False)
print(json.dumps({"unsloth_modules": unsloth_modules(), "foreign": foreign_code()}))
"""

needs_unsloth = pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="Unsloth is not installed")


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def unsloth_run(tmp_path_factory, tiny_student):
    runs = tmp_path_factory.mktemp("child_runs")
    sets = [*SMOKE, f"student={tiny_student}"]
    env = {**os.environ, "UNSLOTH_DISABLE_CPU_FALLBACK": "0"}
    done = subprocess.run([sys.executable, "-c", RUN_AND_INSPECT, str(runs), *sets], capture_output=True, text=True,
                          env=env, timeout=1200, cwd=runs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in runs.iterdir()) == ["demo"], "nothing written beside the run (Unsloth's cache)"
    return runs / "demo", _last_json(done.stdout), sets


@needs_unsloth
def test_unsloth_training_in_run_leaves_the_evaluating_process_unpatched(unsloth_run):
    run, seen, _ = unsloth_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("train", "sft", "evaluate", "report"))
    assert json.loads((run / "train" / "train.json").read_text())["backend"] == "unsloth"
    assert json.loads((run / "sft" / "sft.json").read_text())["backend"] == "unsloth"
    evaluated = json.loads((run / "evaluate" / "utility" / "tuned" / "utility.json").read_text())
    assert evaluated["settings"]["engine"] == "transformers", "the evaluation ran through transformers, in-process"
    assert seen == {"unsloth_modules": [], "foreign": []}


@needs_unsloth
def test_the_same_training_in_process_would_have_patched_it(tmp_path, unsloth_run):
    """The control: the inspection above sees Unsloth's patches where training runs in the process."""
    run, _, _ = unsloth_run
    cfg = TrainConfig(student=json.loads((run / "train" / "train.json").read_text())["student_path"],
                      pairs=run / "pairs", out=tmp_path / "train", backend="unsloth", max_steps=1, batch_size=2,
                      grad_accum=1, max_length=256)
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    env = {**os.environ, "UNSLOTH_DISABLE_CPU_FALLBACK": "0"}
    done = subprocess.run([sys.executable, "-c", TRAIN_IN_PROCESS_AND_INSPECT, str(tmp_path / "cfg.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = _last_json(done.stdout)
    assert "unsloth" in seen["unsloth_modules"] and seen["foreign"]


@needs_unsloth
def test_a_failure_in_the_training_child_is_one_line_and_exit_2(unsloth_run):
    run, _, sets = unsloth_run
    args = [x for o in [*sets, "train.max_prompt_length=1"] for x in ("--set", o)]
    done = subprocess.run([sys.executable, "-m", "lite_delta.cli", "run", "--runs-dir", str(run.parent), *args],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "fits in 1 tokens" in errors[0], done.stderr[-2000:]
    assert json.loads((run / "manifest.json").read_text())["stages"]["train"]["status"] == "failed"


def test_an_unexpected_exception_in_the_child_is_one_line_with_its_traceback_kept(tmp_path, tiny_student):
    import shutil

    student = tmp_path / "student"
    shutil.copytree(tiny_student, student)
    (student / "model.safetensors").write_bytes(b"\0" * 64)  # a torn download
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "List fruits.", "chosen": "- apple\n- pear", "rejected": "Fruit."}) + "\n")
    cfg = TrainConfig(student=str(student), pairs=pairs, out=tmp_path / "sft", max_steps=1)
    with pytest.raises(LiteDeltaError) as info:
        train_in_child("sft", cfg, progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("SFT training failed: ")
    assert f"traceback in {tmp_path / 'sft' / ERROR_LOG}" in message
    assert "Traceback (most recent call last)" in (tmp_path / "sft" / ERROR_LOG).read_text()
