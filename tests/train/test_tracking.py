"""Tracking and held-out pairs on the CPU with the real TRL trainer: TensorBoard event files read back by
TensorBoard's own reader, held-out evaluation in the step log, `select: best_eval`, trainer_args checks."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from lite_delta.cli import main
from lite_delta.config import TrainConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.train.split import prompt_key, split_by_prompt
from lite_delta.train.stage import train

THINGS = ("fruits", "birds", "tools", "colours", "rivers", "games", "trees", "songs", "stones", "clouds")
ROWS = [
    {"prompt": [{"role": "user", "content": f"List some {thing}."}],
     "chosen": [{"role": "assistant", "content": f"- one {thing}\n- two {thing}\n- three {thing}"}],
     "rejected": [{"role": "assistant", "content": f"Some {thing}."}]}
    for thing in THINGS
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("tracking") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _cfg(student, pairs, out, **kw) -> TrainConfig:
    base = dict(student=student, pairs=pairs, out=out, batch_size=2, grad_accum=1, learning_rate=2e-2, beta=0.5,
                max_length=96, lora_r=8, lora_alpha=16, save_steps=100, warmup_ratio=0.0, lr_scheduler="constant",
                max_steps=6)
    return TrainConfig(**{**base, **kw})


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under `logdir`, through TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_student):
    """One run with TensorBoard, 30% of the prompts held out, evaluated every 2 steps, the best step kept.

    The held-out pairs are the training pattern reversed (the plain answer chosen), so the more the student
    learns the training pairs, the worse it does on them: the held-out loss ends above its best, and only a
    real selection keeps an earlier step."""
    folder = tmp_path_factory.mktemp("tracked")
    held = {prompt_key(r) for r in split_by_prompt(ROWS, 0.3, seed=0)[1]}
    rows = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} if prompt_key(r) in held else r for r in ROWS]
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = folder / "train"  # a run folder's train/, so the report reads it as a run's
    train(_cfg(tiny_student, pairs, out, report_to="tensorboard", run_name="tiny-dpo", eval_fraction=0.3,
               eval_steps=2, select="best_eval"), progress=False)
    return out


def test_tensorboard_event_files_hold_the_training_and_held_out_scalars(tracked):
    scalars = _scalars(tracked / "tensorboard")
    for tag in ("train/loss", "train/rewards/margins", "train/rewards/accuracies", "train/learning_rate",
                "eval/loss", "eval/rewards/margins", "eval/rewards/accuracies"):
        assert tag in scalars, f"{tag} not in {sorted(scalars)}"
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 7))
    assert [step for step, _ in scalars["eval/loss"]] == [2, 4, 6]
    log = [json.loads(line) for line in (tracked / "train_log.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in log}
    assert [r["step"] for r in log] == list(range(1, 7)), "each step once, evaluations merged into their step"
    for step, value in scalars["train/loss"]:  # the tracker and the step log say the same
        assert value == pytest.approx(by_step[step]["loss"], rel=1e-5)
    for step, value in scalars["eval/rewards/margins"]:
        assert value == pytest.approx(by_step[step]["eval_rewards/margins"], rel=1e-5, abs=1e-6)


def test_held_out_pairs_are_split_by_prompt_and_evaluated_in_the_step_log(tracked):
    log = [json.loads(line) for line in (tracked / "train_log.jsonl").read_text().splitlines()]
    evaluated = [r for r in log if "eval_loss" in r]
    assert [r["step"] for r in evaluated] == [2, 4, 6]
    assert all({"eval_rewards/margins", "eval_rewards/accuracies"} <= set(r) for r in evaluated)
    summary = json.loads((tracked / "train.json").read_text())
    split = json.loads((tracked / "split.json").read_text())
    assert summary["held_out"]["pairs"] == len(split["held_out"]) == 3  # ceil(0.3 x 10 prompts)
    assert summary["pairs"]["rows"] == 7 and summary["report_to"] == ["tensorboard"]
    assert summary["run_name"] == "tiny-dpo"
    train_keys = {prompt_key(r) for r in ROWS} - set(split["held_out"])
    assert len(train_keys) == 7 and not train_keys & set(split["held_out"])


def test_best_eval_selects_the_checkpoint_with_the_lowest_held_out_loss(tracked):
    log = [json.loads(line) for line in (tracked / "train_log.jsonl").read_text().splitlines()]
    best = min((r for r in log if "eval_loss" in r), key=lambda r: r["eval_loss"])
    summary = json.loads((tracked / "train.json").read_text())
    assert summary["selected"]["step"] == best["step"]
    assert summary["selected"]["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-6)
    kept = load_file(tracked / "adapter" / "adapter_model.safetensors")
    chosen = load_file(tracked / "checkpoints" / f"checkpoint-{best['step']}" / "adapter_model.safetensors")
    assert kept.keys() == chosen.keys()
    assert all((kept[k] == chosen[k]).all() for k in kept), "adapter/ is the best evaluated step's adapter"
    assert best["step"] < 6, "the reversed held-out pairs are best before the student has learned the training ones"
    last = load_file(tracked / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors")
    assert any((kept[k] != last[k]).any() for k in kept), "not the last step's adapter"


def test_health_says_when_training_and_held_out_pairs_part(tracked):
    summary = json.loads((tracked / "train.json").read_text())
    parted = [w for w in summary["health_warnings"] if w["kind"] == "held_out_parted"]
    best = summary["held_out"]["best"]
    assert len(parted) == 1 and "memorising" in parted[0]["message"]
    assert f"({best['step']})" in parted[0]["message"].replace("(step ", "(") and parted[0]["step"] > best["step"]
    gap = [w for w in summary["health_warnings"] if w["kind"] == "held_out_gap"]
    assert gap and "held-out pairs only 0%" in gap[0]["message"]  # every reversed pair is judged the wrong way
    log = [json.loads(line) for line in (tracked / "train_log.jsonl").read_text().splitlines()]
    assert "held_out_parted" in next(r for r in log if r["step"] == parted[0]["step"])["warnings"]


def test_the_split_is_by_prompt_seeded_and_kept_on_resume(tmp_path):
    rows = ROWS + [{**ROWS[0], "chosen": [{"role": "assistant", "content": "- a\n- b"}]}]  # a prompt twice
    train_rows, held = split_by_prompt(rows, 0.3, seed=1, out=tmp_path)
    assert not {prompt_key(r) for r in train_rows} & {prompt_key(r) for r in held}
    assert len(train_rows) + len(held) == len(rows)
    again, held_again = split_by_prompt(list(reversed(rows)), 0.3, seed=1, out=tmp_path)
    assert {prompt_key(r) for r in held_again} == {prompt_key(r) for r in held}
    other = split_by_prompt(rows, 0.3, seed=2)[1]
    assert {prompt_key(r) for r in other} != {prompt_key(r) for r in held}  # another seed, another split
    with pytest.raises(LiteDeltaError, match="at least 2"):
        split_by_prompt(ROWS[:1], 0.3, seed=0)


@pytest.mark.parametrize("field, value, message", [
    ("weight_decya", 0.1, "train.trainer_args.weight_decya: not a field of TRL's DPOConfig (trl 1.15.0) (did you "
                          "mean weight_decay?)"),
    ("weight_decay", "lots", "train.trainer_args.weight_decay: 'lots' is not a float"),
    ("learning_rate", 1e-4, "train.trainer_args.learning_rate: lite-delta sets it; use train.learning_rate"),
    ("push_to_hub", True, "lite-delta push"),
    ("optim", "adamw_nonsense", "TRL's DPOConfig refused the training settings (train.trainer_args: optim)"),
])
def test_a_wrong_trainer_arg_exits_2_naming_it_before_any_model_loads(tmp_path, pairs, capsys, field, value,
                                                                       message):
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"trainer_args": {field: value}}))
    # the student does not exist: reaching it would be a different error, so the check runs before any load
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--pairs", str(pairs), "--student", str(tmp_path / "no-such-model"), "--out",
              str(tmp_path / "out"), "--config", str(config)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "no-such-model" not in err


def test_trainer_args_reach_trl_and_an_unknown_tracker_is_refused(tmp_path, tiny_student, pairs):
    from lite_delta.train.stage import dpo_args

    cfg = _cfg(tiny_student, pairs, tmp_path, trainer_args={"weight_decay": 0.05, "max_grad_norm": 0.5,
                                                            "optim": "adamw_torch", "adam_beta2": 0.999})
    args = dpo_args(cfg, tmp_path / "checkpoints", cuda=False, backend="peft", precision="fp32")
    assert (args.weight_decay, args.max_grad_norm, args.optim, args.adam_beta2) == (0.05, 0.5, "adamw_torch", 0.999)
    assert args.report_to == [] and args.eval_strategy == "no"
    with pytest.raises(LiteDeltaError, match="not a tracker transformers knows"):
        dpo_args(_cfg(tiny_student, pairs, tmp_path, report_to="tensorbored"), tmp_path, cuda=False,
                 backend="peft", precision="fp32")
    with pytest.raises(Exception, match="select: best_eval picks by the held-out pairs"):
        _cfg(tiny_student, pairs, tmp_path, select="best_eval")


def test_the_sft_contrast_is_tracked_and_evaluated_on_the_same_held_out_prompts(tmp_path, tiny_student, pairs,
                                                                             tracked):
    from lite_delta.train.sft import train_sft

    out = train_sft(_cfg(tiny_student, pairs, tmp_path / "sft", report_to="tensorboard", eval_fraction=0.3,
                         eval_steps=3, trainer_args={"weight_decay": 0.01, "beta": 2.0}), progress=False)
    scalars = _scalars(out / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 7))
    assert [s for s, _ in scalars["eval/loss"]] == [3, 6]
    summary = json.loads((out / "sft.json").read_text())
    assert summary["held_out"]["evaluations"] == 2 and summary["run_name"] == "sft"  # the folder's name
    # the DPO run's split (same rows, fraction and seed): no prompt SFT trains on is one DPO held out
    assert json.loads((out / "split.json").read_text())["held_out"] == \
        json.loads((tracked / "split.json").read_text())["held_out"]


def test_the_report_shows_held_out_margins_accuracy_and_the_kept_step(tracked, tmp_path):
    from lite_delta.report import training_section

    section = "\n".join(training_section(tracked.parent, tmp_path / "figures"))
    summary = json.loads((tracked / "train.json").read_text())
    last, best = summary["held_out"]["last"], summary["held_out"]["best"]
    assert "Held-out pairs: 3 (3 prompts, 30% of them" in section and "evaluated 3 times" in section
    assert f"margin {last['eval_rewards/margins']:.3f}, accuracy {last['eval_rewards/accuracies']:.2f}" in section
    assert f"The adapter is step {best['step']}'s (best_eval" in section
    assert (tmp_path / "figures" / "training.png").stat().st_size > 10_000


@pytest.mark.parametrize("options, message", [
    (["--report-to", "tensorbored"], "train.report_to: 'tensorbored' is not a tracker transformers knows"),
    (["--select", "best_eval"], "select: best_eval picks by the held-out pairs: set eval_fraction"),
    (["--eval-fraction", "0.7"], "eval_fraction"),
])
def test_the_train_command_checks_tracking_options_before_any_model_loads(tmp_path, pairs, capsys, options,
                                                                           message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--pairs", str(pairs), "--student", str(tmp_path / "no-such-model"), "--out",
              str(tmp_path / "out"), *options])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "no-such-model" not in err


def test_lite_delta_run_checks_trainer_args_before_generating(tmp_path, capsys):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--runs-dir", str(runs), "--set", "train.trainer_args={weight_decay: heavy}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "train.trainer_args.weight_decay: 'heavy' is not a float" in err and "Traceback" not in err
    assert not runs.exists(), "nothing generated, not even the runs folder"


def test_the_report_says_when_the_best_evaluated_step_is_the_last():
    from lite_delta.report import held_out_lines

    held = {"pairs": 7, "prompts": 5, "fraction": 0.1, "evaluations": 10,
            "last": {"step": 20, "eval_loss": 0.435}, "best": {"step": 20, "eval_loss": 0.435}}
    summary = {"steps": 20, "held_out": held, "selected": {"by": "best_eval (lowest held-out loss)", "step": 20}}
    text = " ".join(held_out_lines(summary))
    assert "step 20's (best_eval (lowest held-out loss)): the last step's" in text and "not the last" not in text
    summary["selected"]["step"] = 12
    assert "step 12's (best_eval (lowest held-out loss)), not the last step's" in " ".join(held_out_lines(summary))
