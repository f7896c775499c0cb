"""`lite-delta train --num-processes 2`: two CPU processes started by accelerate launch (gloo), real TRL/PEFT.

Two processes x batch 1 must train like one process x batch 2 on the same pairs: the same pairs in each
step (accelerate's seedable sampler hands process r the r-th pair of each global batch), DDP averaging
the two gradients as the batch mean does. Step 1's loss is ln 2 whatever happens (the LoRA starts at
zero), so the test compares every step's gradient norm and the losses after it, and the adapters.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from lite_delta.cli import main
from lite_delta.config import Recipe, TrainConfig
from lite_delta.train.launch import SHIPPED_CONFIGS, accelerate_config_file, launch_command
from lite_delta.train.stage import train

ROWS = [
    {"prompt": [{"role": "user", "content": f"List some {thing}."}],
     "chosen": [{"role": "assistant", "content": f"- one {thing}\n- two {thing}\n- three {thing}"}],
     "rejected": [{"role": "assistant", "content": f"Some {thing}."}]}
    for thing in ("fruits", "birds", "tools", "colours", "rivers", "games", "trees", "songs")
]
SETTINGS = dict(grad_accum=1, learning_rate=5e-3, beta=0.5, max_length=128, lora_r=8, lora_alpha=16, save_steps=2,
                warmup_ratio=0.0, lr_scheduler="constant", max_steps=3)
# Measured on a 2-core AMD EPYC (fp32): losses differ by <= 6e-8, margins 9e-7, gradient norms 1e-7 (relative),
# adapter weights 7e-7; one process x batch 1 instead differs by 8e-3 in step 2's loss and 0.03 in the weights.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("launch") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _config_file(folder, student, pairs, **fields):
    path = folder / "train.yaml"
    path.write_text(json.dumps({"student": student, "pairs": str(pairs), **SETTINGS, **fields}))
    return path


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_student, pairs):
    """One CLI run in 2 processes x batch 1, 3 steps, a checkpoint at step 2; (out, its stdout+stderr)."""
    folder = tmp_path_factory.mktemp("two")
    config = _config_file(folder, tiny_student, pairs, batch_size=1)
    # The CLI in a child process, as a user runs it; its launcher and workers write to the same pipes.
    result = subprocess.run(
        [sys.executable, "-m", "lite_delta", "train", "--config", str(config), "--out", str(folder / "out"),
         "--num-processes", "2"], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "out", result.stdout + result.stderr


@pytest.mark.slow
def test_two_processes_of_batch_1_train_like_one_of_batch_2(two_processes, tiny_student, pairs, tmp_path):
    from safetensors.torch import load_file

    out, _ = two_processes
    one = train(TrainConfig(student=tiny_student, pairs=pairs, out=tmp_path / "one", batch_size=2, **SETTINGS),
                progress=False)
    a, b = _log(one), _log(out)
    assert [s["step"] for s in a] == [s["step"] for s in b] == [1, 2, 3]
    assert b[1]["loss"] < b[0]["loss"] - 1e-3, "the steps after the first changed the model"
    for x, y in zip(a, b):
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=TOLERANCE), "the gradient is the global batch's mean"
        for key in ("loss", "rewards/margins", "rewards/chosen", "rewards/rejected"):
            assert y[key] == pytest.approx(x[key], abs=TOLERANCE), (x["step"], key)
    first = load_file(one / "adapter" / "adapter_model.safetensors")
    second = load_file(out / "adapter" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert max((first[k] - second[k]).abs().max().item() for k in first) < TOLERANCE
    summary = json.loads((out / "train.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 2 and summary["steps"] == 3
    assert json.loads((one / "train.json").read_text())["processes"] == 1


@pytest.mark.slow
def test_only_the_main_process_writes_and_prints(two_processes):
    out, output = two_processes
    assert len(_log(out)) == 3, "one line per step, not one per process"
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-2", "checkpoint-3"]
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert (out / "adapter" / "README.md").read_text().count("| processes, global batch | 2, 2 |") == 1
    assert output.count("One training pair as the student sees it") == 1
    assert len(re.findall(r"^train .*3/3 \(100%\)", output, flags=re.M)) == 1, "the progress line is printed once"
    assert output.count("done: ") == 1


@pytest.mark.slow
def test_resume_in_two_processes_continues_from_the_checkpoint(two_processes, tiny_student, pairs, tmp_path):
    full, _ = two_processes
    crashed = tmp_path / "crashed"
    (crashed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "checkpoint-2", crashed / "checkpoints" / "checkpoint-2")
    shutil.copy(full / "train_log.jsonl", crashed / "train_log.jsonl")  # with step 3, which the resume replaces
    main(["train", "--config", str(_config_file(tmp_path, tiny_student, pairs, batch_size=1)), "--out", str(crashed),
          "--num-processes", "2", "--resume"])
    a, b = _log(full), _log(crashed)
    assert [s["step"] for s in b] == [1, 2, 3]
    assert b[2]["loss"] == pytest.approx(a[2]["loss"], abs=1e-6)
    assert b[2]["grad_norm"] == pytest.approx(a[2]["grad_norm"], rel=1e-6)
    assert json.loads((crashed / "train.json").read_text())["resumed_from"].endswith("checkpoint-2")


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_accelerate_configs_load_in_accelerate(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(accelerate_config_file(name)))
    expected = {"ddp": "MULTI_GPU", "zero3": "DEEPSPEED", "fsdp-qlora": "FSDP"}[name]
    assert str(config.distributed_type).endswith(expected) and config.num_machines == 1
    if name == "zero3":
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_init_flag"]
    if name == "fsdp-qlora":
        assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] and not config.fsdp_config["fsdp_use_orig_params"]


def test_the_launch_is_accelerates_with_the_file_and_the_count(tmp_path):
    cfg = TrainConfig(student="s", pairs=tmp_path / "p.jsonl", out=tmp_path / "o", num_processes=4)
    cmd = launch_command(cfg, accelerate_config_file("ddp"), tmp_path / "c.json", resume=True, progress=True)
    assert cmd[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(accelerate_config_file("ddp"))]
    assert cmd[5:] == ["--num_processes", "4", "-m", "lite_delta.train.launch", str(tmp_path / "c.json"), "--resume"]
    from_file = launch_command(cfg.model_copy(update={"num_processes": 1}), accelerate_config_file("zero3"),
                               tmp_path / "c.json", resume=False, progress=False)
    assert "--num_processes" not in from_file and from_file[-1] == "--no-progress", "the file's count is used"


def test_mistakes_exit_2_before_any_process_starts(tiny_student, pairs, tmp_path, capsys):
    base = ["train", "--pairs", str(pairs), "--student", tiny_student, "--num-processes", "2"]
    with pytest.raises(SystemExit) as info:
        main([*base, "--out", str(tmp_path / "a"), "--accelerate-config", "zero4"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "accelerate_config 'zero4'" in err and "fsdp-qlora" in err

    bad = tmp_path / "mine.yaml"
    bad.write_text("distributed_type: MULTI_GPU\nnum_processes: 2\nnum_gpus_please: 2\n")
    with pytest.raises(SystemExit) as info:
        main([*base, "--out", str(tmp_path / "b"), "--accelerate-config", str(bad)])
    err = capsys.readouterr().err.replace("\n", " ")
    assert info.value.code == 2 and "accelerate cannot read it" in err and "num_gpus_please" in err

    (tmp_path / "c" / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    with pytest.raises(SystemExit) as info:
        main([*base, "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--resume" in err and "accelerate" not in err, "said once, by the launching process"


def test_the_pipeline_trains_a_recipe_with_num_processes_through_the_launch(monkeypatch, tmp_path):
    """Dispatch only: the recipe's train.num_processes reaches `launch` (the real launch is tested above)."""
    import lite_delta.train.launch as launch_module
    from lite_delta.pipeline import run_train

    seen = []
    monkeypatch.setattr(launch_module, "launch", lambda cfg, **kw: seen.append((cfg, kw)) or cfg.out)
    recipe = Recipe.model_validate({
        "name": "r", "prompts": {"source": "builtin:demo"}, "teachers": {"chosen": "a.gguf", "rejected": "b.gguf"},
        "student": "s", "train": {"num_processes": 2, "accelerate_config": "ddp", "grad_accum": 4},
    })
    run_train(recipe, tmp_path)
    (cfg, kw), = seen
    assert cfg.num_processes == 2 and cfg.accelerate_config == "ddp" and cfg.out == tmp_path / "train"
    assert kw == {"resume": False, "progress": True}
