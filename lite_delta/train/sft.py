"""The SFT contrast: supervised fine-tuning of the student on the chosen answers alone.

The paper's central picture (BRIEF §1) is that imitating weak chosen answers pulls a model toward their
level, while DPO on the pairs pushes past both. This trains the contrast with the DPO run's own settings
and budget: the same pairs after the same filters (so the same chosen answers, in the same number of
rows), the same LoRA rank, alpha and targets, learning rate, schedule, batch size, steps or epochs and
seed. Each chosen answer is seen as often as in DPO; SFT does not see the rejected answers — that is the
difference being measured. Contrast pairs (a chosen answer against a degenerate copy of itself, pairs/contrast.py)
are left out: their chosen answers are other pairs' chosen answers again, and what they add is on the rejected side. Loss on the answer tokens only (TRL's prompt-completion format).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from rich.console import Console

from lite_delta.config import TrainConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.train.health import diverged_message, diverged_weights
from lite_delta.files import writable_dir, write_json
from lite_delta.models.student import prepare_student
from lite_delta.precision import device_capability, mixed_precision, resolve_precision
from lite_delta.train.backends import (
    fp32_trainable_weights,
    import_unsloth,
    load_student,
    resolve_backend,
    resolve_quantization,
)
from lite_delta.train.pairs_io import (drop_control_text, drop_degenerate, load_pairs, pairs_source, sampled_pairs,
                                       special_texts)
from lite_delta.train.sequences import check_sequences, end_token_ids, fit_prompts, template_for, with_template_kwargs
from lite_delta.train.split import split_by_prompt
from lite_delta.train.stage import held_out_summary, run_summary
from lite_delta.train.trainer_args import (TENSORBOARD_DIR, checked_trainer_args, config_error,
                                           sft_trainer_args, tracking_and_eval_args, use_tensorboard_dir)

log = logging.getLogger(__name__)

STEP_LOG = "train_log.jsonl"
SUMMARY = "sft.json"
console = Console(stderr=True)


def sft_rows(rows: list[dict]) -> list[dict]:
    """Preference rows -> TRL prompt-completion rows holding the chosen answer (loss on it only)."""
    return [{"prompt": row["prompt"], "completion": row["chosen"],
             **({"chat_template_kwargs": row["chat_template_kwargs"]} if "chat_template_kwargs" in row else {})}
            for row in rows]


def train_sft(cfg: TrainConfig, *, progress: bool = True, student_cache: Path | None = None) -> Path:
    """LoRA SFT on the chosen answers of `cfg.pairs`; returns `cfg.out` (adapter/, train_log.jsonl, sft.json).

    `student_cache`: where a GGUF student is converted (the DPO run's copy, so it is converted once)."""
    import torch

    cuda = torch.cuda.is_available()
    backend = resolve_backend(cfg.backend, cuda)
    if backend == "unsloth":
        import_unsloth()
    out = writable_dir(cfg.out, "--out", create=False)
    # DPO's filters, same rows; not the contrast pairs, whose chosen answers are other pairs' again
    rows, degenerate = drop_degenerate(sampled_pairs(load_pairs(cfg.pairs)), pairs_source(cfg.pairs))
    rows = with_template_kwargs(rows, cfg.chat_template_kwargs)
    capability, device = device_capability()
    precision = resolve_precision(cfg.precision, capability, device)
    quantization = resolve_quantization(cfg.quantization, backend, cuda)
    out.mkdir(parents=True, exist_ok=True)
    student = prepare_student(cfg.student, student_cache or out / "student")

    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback
    from trl import SFTTrainer

    from lite_delta.train.callbacks import ProgressBar, StepLog

    tokenizer = AutoTokenizer.from_pretrained(student)
    template, template_source = template_for(tokenizer, cfg.chat_template, cfg.student)
    tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = drop_control_text(rows, special_texts(tokenizer), degenerate, pairs_source(cfg.pairs))  # as DPO's
    check_sequences(tokenizer, rows, end_token_ids(tokenizer, student))
    budget = cfg.max_prompt_length or cfg.max_length // 2
    rows, truncated, dropped = fit_prompts(rows, tokenizer, budget)
    if not rows:
        raise LiteDeltaError(f"no prompt in {cfg.pairs} fits in {budget} tokens: raise max_prompt_length")

    held_out = []
    if cfg.eval_fraction:  # the DPO run's split: the same rows, fraction and seed
        rows, held_out = split_by_prompt(rows, cfg.eval_fraction, cfg.seed, out)

    autocast = mixed_precision(precision)  # the device's precision (Unsloth's CPU mode reports its own dtype below)
    args = sft_args(cfg, out, cuda=cuda, backend=backend, autocast=autocast)  # checked before the model loads
    model, tokenizer, lora, precision = load_student(backend, student, cfg, precision, cuda, tokenizer, template,
                                                     quantization=quantization)
    step_log = StepLog(out / STEP_LOG, loss_type="sft")
    bar = ProgressBar(step_log, console, label="sft") if progress else None
    callbacks = [step_log] + ([bar] if bar else [])
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(sft_rows(rows)),
                         eval_dataset=Dataset.from_list(sft_rows(held_out)) if held_out else None,
                         processing_class=tokenizer, peft_config=lora, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    fp32_trainable_weights(trainer)  # undo TRL's bf16 cast of a QLoRA adapter (fp16 cards fail)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # best_eval's checkpoints of an earlier attempt
    use_tensorboard_dir(trainer, out / TENSORBOARD_DIR, None, True)
    started = time.perf_counter()
    try:
        trainer.train()
    finally:
        if bar is not None:
            bar.close()
    bad = diverged_weights(trainer.model)
    if bad:
        raise LiteDeltaError(diverged_message(bad, trainer.state.global_step, cfg.learning_rate))
    adapter = out / "adapter"
    trainer.save_model(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    records = step_log.records
    summary = {
        "what": "SFT on the chosen answers (the contrast to DPO)",
        **run_summary(cfg, student=student, backend=backend, device=device, precision=precision, template=template,
                      template_source=template_source, rows=rows, truncated=truncated, dropped=dropped, budget=budget,
                      degenerate=degenerate, quantization=quantization, model=trainer.model),
        "steps": trainer.state.global_step,
        "passes_over_chosen": round(trainer.state.global_step * cfg.batch_size * cfg.grad_accum / len(rows), 2),
        "chosen_tokens_per_pass": _answer_tokens(tokenizer, rows),
        "seconds": round(time.perf_counter() - started, 1),
        "last_log": records[-1] if records else None,
        **held_out_summary(cfg, held_out, records, trainer.state),
        "report_to": args.report_to,
        "run_name": args.run_name,
    }
    write_json(out / SUMMARY, summary)
    return out


def sft_args(cfg: TrainConfig, out: Path, *, cuda: bool, backend: str, autocast: dict):
    """TRL's SFTConfig with the DPO run's knobs, trackers and held-out evaluation, and the trainer_args SFTConfig
    also has (checked as DPO's are)."""
    from trl import SFTConfig

    extra = checked_trainer_args(sft_trainer_args(cfg.trainer_args), SFTConfig)
    settings = dict(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=False,
        gradient_checkpointing=cuda and backend == "peft",
        logging_steps=1,
        save_strategy="no",  # a contrast run of a few minutes; rerunning the stage retrains it (but best_eval)
        seed=cfg.seed,
        data_seed=cfg.seed,
        disable_tqdm=True,
        use_cpu=not cuda,
        adam_beta2=0.95,
        **autocast,
    )
    settings.update(tracking_and_eval_args(cfg, run_name=f"{cfg.run_name}-sft" if cfg.run_name else None))
    try:
        return SFTConfig(**{**settings, **extra})
    except (ValueError, TypeError) as exc:
        raise config_error(exc, SFTConfig, extra) from None


def _answer_tokens(tokenizer, rows: list[dict]) -> int:
    """Chosen-answer tokens in one pass over the rows (the same answers DPO sees on its chosen side)."""
    return sum(len(tokenizer(row["chosen"][-1]["content"], add_special_tokens=False)["input_ids"]) for row in rows)
