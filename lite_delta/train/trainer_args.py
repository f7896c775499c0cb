"""What a recipe may add to TRL's trainer config: trackers (`report_to`, `run_name`), held-out evaluation and
checkpoint selection, and `trainer_args`, any other DPOConfig/SFTConfig field, checked against the installed TRL
before a model loads (a wrong name or type is one line naming it, not a traceback an hour in)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path

from lite_delta.errors import LiteDeltaError

# TRL fields lite-delta sets itself, and the recipe field (or mechanism) that sets them.
OWNED = {
    "output_dir": "--out (the training folder)",
    "per_device_train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "learning_rate": "train.learning_rate",
    "lr_scheduler_type": "train.lr_scheduler",
    "warmup_steps": "train.warmup_ratio",
    "warmup_ratio": "train.warmup_ratio",
    "num_train_epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "beta": "train.beta",
    "loss_type": "train.loss",
    "loss_weights": "train.loss_weights",
    "max_length": "train.max_length",
    "precompute_ref_log_probs": "train.precompute_ref_log_probs",
    "save_steps": "train.save_steps",
    "save_strategy": "train.save_steps",
    "seed": "train.seed",
    "data_seed": "train.seed",
    "report_to": "train.report_to",
    "run_name": "train.run_name",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "bf16_full_eval": "train.precision",
    "fp16_full_eval": "train.precision",
    "use_cpu": "the device (lite-delta trains on the GPU when there is one)",
    "eval_strategy": "train.eval_fraction and train.eval_steps",
    "eval_steps": "train.eval_steps",
    "do_eval": "train.eval_fraction",
    "load_best_model_at_end": "train.select",
    "metric_for_best_model": "train.select",
    "greater_is_better": "train.select",
    "logging_steps": "nothing: every step is logged (train_log.jsonl)",
    "logging_strategy": "nothing: every step is logged (train_log.jsonl)",
    "disable_tqdm": "nothing: lite-delta draws its own progress bar",
    "gradient_checkpointing": "train.backend (PEFT on a GPU checkpoints; Unsloth sets its own)",
    "resume_from_checkpoint": "--resume (lite-delta run resumes by itself)",
    "push_to_hub": "`lite-delta push RUN_DIR --repo USER/NAME` after the run",
    "hub_model_id": "`lite-delta push RUN_DIR --repo USER/NAME` after the run",
    "model_init_kwargs": "train.quantization and train.precision (lite-delta loads the student)",
    "completion_only_loss": "nothing: the SFT contrast's loss is on the answers only, by design",
    "packing": "nothing: the SFT contrast trains one pair's prompt and answer per row, by design",
}
INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow",
           "comet_ml": "comet_ml", "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive",
           "swanlab": "swanlab", "codecarbon": "codecarbon", "azure_ml": "azureml-core", "dagshub": "dagshub",
           "flyte": "flytekit"}
TENSORBOARD_DIR = "tensorboard"  # <out>/tensorboard: `tensorboard --logdir RUN_DIR` finds train/ and sft/


def checked_trainer_args(args: dict, config_cls, *, field: str = "train.trainer_args") -> dict:
    """`args` with each value as the installed TRL's `config_cls` types it; a wrong name, a lite-delta-owned
    name or a wrong type raises one LiteDeltaError naming the field."""
    from pydantic import TypeAdapter, ValidationError
    from pydantic.errors import PydanticSchemaGenerationError

    fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    hints = typing.get_type_hints(config_cls)
    checked = {}
    for name, value in args.items():
        if name in OWNED:
            raise LiteDeltaError(f"{field}.{name}: lite-delta sets it; use {OWNED[name]} instead")
        if name not in fields:
            near = difflib.get_close_matches(name, sorted(fields), n=3, cutoff=0.75)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise LiteDeltaError(f"{field}.{name}: not a field of TRL's {config_cls.__name__} "
                                 f"(trl {_trl_version()}){hint}")
        try:
            checked[name] = TypeAdapter(hints[name]).validate_python(value)
        except ValidationError:
            raise LiteDeltaError(f"{field}.{name}: {value!r:.60} is not a {_type_name(hints[name])}, as TRL's "
                                 f"{config_cls.__name__} declares it") from None
        except (PydanticSchemaGenerationError, TypeError, KeyError):
            checked[name] = value  # a type pydantic cannot read: the config's own checks (below) judge it
    return checked


def config_error(exc: Exception, config_cls, trainer_args: dict) -> LiteDeltaError:
    """TRL's own __post_init__ refusal of the combined config, as one line (e.g. an unknown `optim`)."""
    named = f" (train.trainer_args: {', '.join(trainer_args)})" if trainer_args else ""
    return LiteDeltaError(f"TRL's {config_cls.__name__} refused the training settings{named}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def checked_report_to(names: list[str], *, field: str = "train.report_to") -> list[str]:
    """The trackers to pass to transformers ([] for none); an unknown or uninstalled one is one line."""
    if names in (["none"], []):
        return []
    from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                             get_available_reporting_integrations)

    if names == ["all"]:
        return get_available_reporting_integrations()
    available = set(get_available_reporting_integrations())
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise LiteDeltaError(f"{field}: {name!r} is not a tracker transformers knows; use none or "
                                 f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
        if name not in available:
            raise LiteDeltaError(f"{field}: {name} is not installed here: pip install {INSTALL.get(name, name)} "
                                 "(or report_to: none)")
    return list(names)


def check_settings(settings, *, sft: bool = False) -> None:
    """Everything above for a recipe's `train:` section, without loading a model (`lite-delta run` calls it
    before the first stage, so a typo does not wait for generation to finish)."""
    checked_report_to(list(settings.report_to))
    if settings.trainer_args:
        from trl import DPOConfig, SFTConfig

        checked_trainer_args(settings.trainer_args, DPOConfig)
        if sft:
            checked_trainer_args(sft_trainer_args(settings.trainer_args), SFTConfig)


def sft_trainer_args(args: dict) -> dict:
    """The DPO run's trainer_args that SFTConfig also has (beta, rpo_alpha, ... are DPO's alone)."""
    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig) if f.init}
    return {k: v for k, v in args.items() if k in names}


def tracking_and_eval_args(cfg, *, run_name: str | None = None) -> dict:
    """The TRL config fields for trackers, held-out evaluation and checkpoint selection."""
    args: dict = {"report_to": checked_report_to(list(cfg.report_to)),
                  "run_name": cfg.run_name or run_name or Path(cfg.out).name}
    if cfg.eval_fraction:
        every = cfg.eval_steps or 0.1  # transformers reads a float below 1 as a share of the total steps
        args.update(eval_strategy="steps", eval_steps=every, per_device_eval_batch_size=cfg.batch_size)
        if cfg.select == "best_eval":  # transformers' own selection: a checkpoint at each evaluation, the best kept
            args.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
                        save_strategy="steps", save_steps=every)
    return args


def use_tensorboard_dir(trainer, logdir: Path, resumed_step: int | None, main: bool) -> None:
    """Point transformers' TensorBoard callback at `logdir` (its default is a new dated folder under the
    checkpoints on every start). On resume, events past the checkpoint's step from the crashed attempt are
    purged, so TensorBoard draws each step once."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and main:
            callback.tb_writer = SummaryWriter(log_dir=str(logdir),
                                               purge_step=resumed_step + 1 if resumed_step is not None else None)


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _trl_version() -> str:
    import trl

    return trl.__version__
