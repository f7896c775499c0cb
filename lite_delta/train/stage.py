"""The train stage: LoRA DPO of the student on the weak pairs, with checkpoints, resume and a step log.

Order of work: resolve the backend (Unsloth is imported before trl/peft), the precision for this
device, the student (a GGUF is converted once) and its chat template; check BOS/EOS of the training
sequences and fit prompts to their budget before any weights load, so a bad input fails in seconds;
save one rendered pair; then train, with checkpoints, a step log, health warnings and a progress bar.
Across processes started by `accelerate launch` (see launch.py) every process trains; only the main
one writes the step log, the adapter, train.json and the run card, and prints.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from rich.console import Console

from lite_delta.config import TrainConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.train.health import diverged_message, diverged_weights
from lite_delta.files import writable_dir, write_json, write_text
from lite_delta.precision import device_capability, mixed_precision, resolve_precision
from lite_delta.train.backends import (
    fp32_trainable_weights,
    import_unsloth,
    load_student,
    resolve_backend,
    resolve_quantization,
    sharded_weights,
    trainable_dtypes,
)
from lite_delta.train.pairs_io import (describe_degenerate, drop_control_text, drop_degenerate, load_pairs, pairs_source,
                                       pairs_stats, special_texts, strip_contrast)
from lite_delta.train.sequences import (
    check_sequences,
    end_token_ids,
    fit_prompts,
    rendered_pair,
    template_for,
    template_sha,
    with_template_kwargs,
)
from lite_delta.models.student import prepare_student
from lite_delta.train.probe import PROBE_FILE, GreedyProbe, probe_rows
from lite_delta.train.split import prompt_key, split_by_prompt
from lite_delta.train.trainer_args import (TENSORBOARD_DIR, checked_trainer_args, config_error,
                                           tracking_and_eval_args, use_tensorboard_dir)

log = logging.getLogger(__name__)

STEP_LOG = "train_log.jsonl"
RENDERED_PAIR = "rendered_pair.txt"
console = Console(stderr=True)


def last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a LoRA adapter with DPO; returns the output folder (adapter/, train_log.jsonl, train.json)."""
    import torch

    cuda = torch.cuda.is_available()
    backend = resolve_backend(cfg.backend, cuda)
    if cfg.init_adapter is not None:
        check_init_adapter(cfg.init_adapter)
        if backend == "unsloth":  # its loader makes a new adapter; PEFT loads one to train on
            log.warning("init_adapter: training goes on from %s with PEFT (Unsloth starts a new adapter)",
                        cfg.init_adapter)
            backend = "peft"
    if backend == "unsloth":
        import_unsloth()  # before anything imports trl, peft or transformers
    out = writable_dir(cfg.out, "--out", create=False)
    checkpoints = out / "checkpoints"
    if not resume and last_checkpoint(checkpoints):
        raise LiteDeltaError(f"{out} already has checkpoints: pass --resume to continue, or use a new --out")
    rows, degenerate = drop_degenerate(load_pairs(cfg.pairs), pairs_source(cfg.pairs))  # before any weights load
    rows, contrast = strip_contrast(rows)
    rows = with_template_kwargs(rows, cfg.chat_template_kwargs)  # TRL renders each row with them
    capability, device = device_capability()
    precision = resolve_precision(cfg.precision, capability, device)
    quantization = resolve_quantization(cfg.quantization, backend, cuda)
    # Before any weights load: it joins this process to those `accelerate launch` started (rank, device,
    # gloo on the CPU), and under DeepSpeed ZeRO-3 lets from_pretrained shard the weights as they load.
    if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # gloo processes: accelerate names their device cpu:RANK, which the Trainer's resume passes to
        # torch.load as map_location and torch cannot map; plain "cpu" (accelerate's own variable) can.
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    args = dpo_args(cfg, checkpoints, cuda=cuda, backend=backend, precision=precision)
    main = args.process_index == 0  # across processes, only the main one writes files and prints
    progress = progress and main
    if not main:  # the libraries' loading bars and notes once, from the main process
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    if main and any(degenerate.values()):
        log.warning("%s: dropped %d degenerate pairs (%s)", pairs_source(cfg.pairs), sum(degenerate.values()),
                    describe_degenerate(degenerate))
    out.mkdir(parents=True, exist_ok=True)
    with args.main_process_first(local=False, desc="student conversion"):  # a GGUF is converted once
        student = prepare_student(cfg.student, out / "student")

    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback
    from trl import DPOTrainer

    from lite_delta.train.callbacks import ProgressBar, StepLog  # imports transformers: after Unsloth

    tokenizer = AutoTokenizer.from_pretrained(student)
    template, template_source = template_for(tokenizer, cfg.chat_template, cfg.student)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = drop_control_text(rows, special_texts(tokenizer), degenerate, pairs_source(cfg.pairs))
    if main and degenerate["control_text"]:
        log.warning("%s: dropped %d pairs whose text holds a special token of the student (a forged turn)",
                    pairs_source(cfg.pairs), degenerate["control_text"])
    check_sequences(tokenizer, rows, end_token_ids(tokenizer, student))
    budget = cfg.max_prompt_length or cfg.max_length // 2
    rows, truncated, dropped = fit_prompts(rows, tokenizer, budget)
    if not rows:
        raise LiteDeltaError(f"no prompt in {cfg.pairs} fits in {budget} tokens: raise max_prompt_length")
    held_out = []
    if cfg.eval_fraction:  # by prompt, after every filter, so both sides see the pairs as they are trained
        rows, held_out = split_by_prompt(rows, cfg.eval_fraction, cfg.seed, out, main=main)
    pair_text = rendered_pair(tokenizer, rows[0])
    if main:
        write_text(out / RENDERED_PAIR, pair_text)
    if progress:
        console.print(f"[bold]One training pair as the student sees it[/bold] (also in {out / RENDERED_PAIR}):")
        console.print(pair_text[:3000], markup=False, highlight=False)

    distributed = args.world_size > 1
    if backend == "unsloth" and cuda and sharded_weights():
        raise LiteDeltaError("FSDP and DeepSpeed ZeRO-3 shard the weights, which Unsloth's 4-bit loader does not: "
                             "pass --backend peft (Unsloth's multi-GPU mode is DDP: --num-processes N alone)")
    sharded = cuda and sharded_weights()
    model, tokenizer, lora, precision = load_student(
        backend, student, cfg, precision, cuda, tokenizer, template, quantization=quantization,
        device_index=args.local_process_index if cuda and distributed else None, sharded=sharded)
    probe = greedy_probe(cfg, rows, held_out, tokenizer, out, backend=backend, distributed=distributed,
                         end_ids=end_token_ids(tokenizer, student)) if main else None
    step_log = StepLog(out / STEP_LOG, loss_type=cfg.loss, main=main, beta=cfg.beta, probe=probe,
                       probe_steps=cfg.probe_steps, stop_on_probe=cfg.select == "probe", contrast=contrast > 0)
    bar = ProgressBar(step_log, console) if progress else None
    callbacks = [step_log] + ([bar] if bar else [])
    # With a PEFT model and no ref_model, TRL's reference is the student with the adapter disabled.
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         eval_dataset=Dataset.from_list(held_out) if held_out else None, peft_config=lora,
                         callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # the step log and the progress bar say it once, readably
    fp32_trainable_weights(trainer, sharded=sharded)  # undo TRL's bf16 cast of a QLoRA adapter (fp16 cards fail)
    resume_from = last_checkpoint(checkpoints) if resume else None
    use_tensorboard_dir(trainer, out / TENSORBOARD_DIR, checkpoint_step(resume_from), main)
    if resume and resume_from is None and main:
        log.warning("no checkpoint in %s: starting from the beginning", checkpoints)
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError:
        raise LiteDeltaError(oom_message(cfg, student, trainer.state.global_step, backend)) from None
    finally:
        if bar is not None:
            bar.close()  # a failed or interrupted run leaves no bar drawing, nor a timer printing
    if probe is not None and probe.stopped_at is not None:
        probe.restore(trainer.model)  # select: probe: the last probed step before the greedy answers broke
    bad = diverged_weights(trainer.model)
    if bad:
        raise LiteDeltaError(diverged_message(bad, trainer.state.global_step, cfg.learning_rate))
    adapter = out / "adapter"
    if "ref" in getattr(trainer.model, "peft_config", {}):  # TRL's frozen copy of init_adapter: the reference,
        trainer.model.delete_adapter("ref")                # not part of the student (nor of adapter/)
    if trainer.is_fsdp_enabled:  # FSDP's shards gathered into one adapter file (PEFT's FSDP-QLoRA recipe)
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(adapter))  # every process: ZeRO-3/FSDP gather the weights; only the main one writes
    if not main:
        return out
    tokenizer.save_pretrained(str(adapter))
    records = step_log.records
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    summary = {
        **run_summary(cfg, student=student, backend=backend, device=device, precision=precision, template=template,
                      template_source=template_source, rows=rows, truncated=truncated, dropped=dropped, budget=budget,
                      degenerate=degenerate, quantization=quantization, model=trainer.model),
        **({"contrast_pairs": contrast} if contrast else {}),
        "steps": trainer.state.global_step,
        "processes": args.world_size,
        "global_batch": cfg.batch_size * cfg.grad_accum * args.world_size,
        "resumed_from": resume_from,
        "seconds": round(time.perf_counter() - started, 1),
        "tokens_per_s_mean": round(sum(rates) / len(rates), 1) if rates else None,
        "peak_gpu_gb": max((r.get("peak_gpu_gb", 0) for r in records), default=None) if cuda else None,
        "health_warnings": [vars(w) for w in step_log.warnings],
        "last_log": records[-1] if records else None,
        **held_out_summary(cfg, held_out, records, trainer.state),
        **probe_selection(probe),
        **({"probe": probe.summary()} if probe is not None else {}),
        "report_to": args.report_to,
        "run_name": args.run_name,
    }
    _write_run_card(adapter, summary)
    if cfg.merge:
        summary["merged"] = str(merge_adapter(student, adapter, out / "merged", precision))
    write_json(out / "train.json", summary)
    return out


def check_init_adapter(folder: Path) -> None:
    """A PEFT LoRA adapter folder to go on from: one line naming it otherwise, before any weights load."""
    config = Path(folder) / "adapter_config.json"
    if not config.is_file() or not (Path(folder) / "adapter_model.safetensors").is_file():
        raise LiteDeltaError(f"init_adapter {folder}: not a PEFT adapter folder (adapter_config.json and "
                             "adapter_model.safetensors): pass the adapter/ folder a train run wrote")


def greedy_probe(cfg: TrainConfig, rows: list[dict], held_out: list[dict], tokenizer, out: Path, *, backend: str,
                 distributed: bool, end_ids: set[int]):
    """The greedy probe of `probe_prompts` prompts (probe.py), or None: off, or where it cannot run yet."""
    if not cfg.probe_prompts:
        (out / PROBE_FILE).unlink(missing_ok=True)  # a probe of an earlier attempt must not pass for this one's
        return None
    if backend == "unsloth" or distributed:
        log.warning("train.probe_prompts: the greedy probe runs with the PEFT backend in one process; skipped "
                    "here (%s)%s", "Unsloth" if backend == "unsloth" else "several processes",
                    ", so select: probe keeps the last step's adapter" if cfg.select == "probe" else "")
        return None
    return GreedyProbe(probe_rows(rows, held_out, cfg.probe_prompts), tokenizer, out / PROBE_FILE, end_ids=end_ids)


def probe_selection(probe) -> dict:
    """select: probe stopped training: train.json's `selected` names the kept step and the one that broke."""
    if probe is None or probe.stopped_at is None:
        return {}
    return {"selected": {"by": "probe (the last probed step before the greedy answers broke)",
                         "step": probe.kept_step, "stopped_at": probe.stopped_at}}


def checkpoint_step(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None


def held_out_summary(cfg: TrainConfig, held_out: list[dict], records: list[dict], state) -> dict:
    """train.json's `held_out` (pairs, last and best evaluation) and `selected` (which step is adapter/)."""
    if not held_out:
        return {"selected": {"by": "last", "step": state.global_step}}
    evals = [r for r in records if "eval_loss" in r]
    best = min(evals, key=lambda r: r["eval_loss"]) if evals else None
    summary = {"held_out": {"pairs": len(held_out), "prompts": len({prompt_key(r) for r in held_out}),
                            "fraction": cfg.eval_fraction, "evaluations": len(evals),
                            "last": evals[-1] if evals else None, "best": best}}
    if cfg.select == "best_eval" and state.best_model_checkpoint:
        summary["selected"] = {"by": "best_eval (lowest held-out loss)",
                               "step": checkpoint_step(state.best_model_checkpoint),
                               "eval_loss": state.best_metric}
    else:
        summary["selected"] = {"by": "last", "step": state.global_step}
    return summary


def dpo_args(cfg: TrainConfig, checkpoints: Path, *, cuda: bool, backend: str, precision: str):
    """TRL's DPOConfig for this run: the recipe's knobs, the paper's AdamW betas, checkpoints every save_steps,
    trackers and held-out evaluation, then `trainer_args` (checked against this TRL before a model loads)."""
    from trl import DPOConfig

    extra = checked_trainer_args(cfg.trainer_args, DPOConfig)
    settings = dict(
        output_dir=str(checkpoints),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        beta=cfg.beta,
        loss_type=[cfg.loss] if isinstance(cfg.loss, str) else list(cfg.loss),
        **({"loss_weights": list(cfg.loss_weights)} if cfg.loss_weights is not None else {}),
        max_length=cfg.max_length,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        gradient_checkpointing=cuda and backend == "peft",  # Unsloth sets its own
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        ddp_find_unused_parameters=False,  # DDP: every LoRA weight has a gradient each step; True only slows it
        disable_tqdm=True,
        use_cpu=not cuda,
        adam_beta2=0.95,  # the paper's AdamW betas (0.9, 0.95)
        **mixed_precision(precision),
    )
    settings.update(tracking_and_eval_args(cfg))  # best_eval: a checkpoint at every evaluation
    try:
        return DPOConfig(**{**settings, **extra})
    except (ValueError, TypeError) as exc:
        raise config_error(exc, DPOConfig, extra) from None


def run_summary(cfg: TrainConfig, *, student: str, backend: str, device: str, precision: str, template: str,
                template_source: str, rows: list[dict], truncated: int, dropped: int, budget: int,
                degenerate: dict, quantization: str, model) -> dict:
    """What every training run of the student records (DPO's train.json, the SFT contrast's sft.json)."""
    return {
        "student": cfg.student,
        "student_path": student,
        "backend": backend,
        "device": device,
        "precision": precision,
        "quantization": quantization,
        "trainable_dtype": ",".join(trainable_dtypes(model)),
        "chat_template": {"source": template_source, "sha256": template_sha(template),
                          **({"kwargs": cfg.chat_template_kwargs} if cfg.chat_template_kwargs else {})},
        "config": cfg.model_dump(mode="json"),
        "pairs": {**pairs_stats(rows, cfg.pairs), "truncated_prompts": truncated, "dropped_prompts": dropped,
                  "prompt_budget_tokens": budget, "degenerate_dropped": degenerate},
    }


def oom_message(cfg: TrainConfig, student: str, step: int, backend: str = "peft") -> str:
    """What to lower, in order, with the planner's figure for these settings and the card's size."""
    import torch

    from lite_delta.train.plan import estimate, load_shapes

    total = torch.cuda.get_device_properties(0).total_memory / 1024**3 if torch.cuda.is_available() else None
    card = f" of the card's {total:.1f} GiB" if total else ""
    try:
        need = estimate(load_shapes(student), batch_size=cfg.batch_size, max_length=cfg.max_length,
                        lora_r=cfg.lora_r, backend=backend).total_gib
        planned = f"; the planner estimates {need:.1f} GiB{card} for these settings"
    except LiteDeltaError:
        planned = ""
    return (
        f"CUDA ran out of memory at step {step} (batch_size {cfg.batch_size}, max_length {cfg.max_length}, "
        f"lora_r {cfg.lora_r}){planned}. Lower batch_size first (raise grad_accum to keep the global batch), "
        f"then max_length, then lora_r; `lite-delta plan --student {cfg.student} --gpu-mem GB` prints settings "
        "that fit. Checkpoints are kept: rerun with --resume."
    )


def merge_adapter(student: str, adapter: Path, out: Path, precision: str) -> Path:
    """The adapter folded into a 16-bit copy of the base, reloaded unquantized (merging into 4-bit
    weights would round the update away), saved as safetensors with the tokenizer."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    base = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().to(dtype)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def card_base(student: str) -> tuple[str | None, str]:
    """(the card's `base_model`: a Hub id, else None; the base as the card's text names it). A GGUF or a
    local folder is no Hub id (`pkg://...` or a path there makes the card's metadata invalid): the text
    names the file and its identity instead."""
    from lite_delta.models.refs import model_identity, resolve_model
    from lite_delta.models.student import HUB_ID, is_gguf_reference

    if is_gguf_reference(student):
        try:
            path = resolve_model(student)
        except LiteDeltaError:
            return None, f"`{Path(student).name}`"
        ident = model_identity(path)
        return None, (f"`{path.name}` (GGUF, {ident['size']} bytes, lite-delta identity "
                      f"{ident['sha256_head_tail'][:16]})")
    if Path(student).expanduser().exists() or not HUB_ID.match(student):
        return None, f"the local model `{Path(student).name}`"
    return student, f"`{student}`"


def _write_run_card(adapter: Path, summary: dict) -> None:
    cfg = summary["config"]
    last = summary["last_log"] or {}
    hub_id, named = card_base(summary["student"])
    lines = [
        "---",
        *([f"base_model: {hub_id}"] if hub_id else []),
        "library_name: peft",
        "tags: [dpo, lora, delta-learning, lite-delta]",
        "---",
        "",
        f"# DPO LoRA adapter for {named}",
        "",
        "Trained by lite-delta on weak preference pairs (delta learning, Geng et al. 2025).",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {cfg[k]} |" for k in ("loss", "beta", "learning_rate", "lr_scheduler", "batch_size",
                                          "grad_accum", "max_length", "lora_r", "lora_alpha", "seed")),
        f"| pairs used | {summary['pairs']['rows']} (prompts cut to {summary['pairs']['prompt_budget_tokens']} tokens: "
        f"{summary['pairs']['truncated_prompts']}; dropped: {summary['pairs']['dropped_prompts']}) |",
        f"| degenerate pairs dropped | {describe_degenerate(summary['pairs']['degenerate_dropped'])} |",
        f"| backend, device, precision | {summary['backend']}, {summary['device']}, {summary['precision']} |",
        f"| base weights, trainable weights | {summary['quantization']}, {summary['trainable_dtype']} |",
        f"| chat template | from the {summary['chat_template']['source']}, sha256 {summary['chat_template']['sha256']} |",
        f"| steps | {summary['steps']} |",
        f"| processes, global batch | {summary['processes']}, {summary['global_batch']} |",
        f"| final loss / margin / accuracy | {last.get('loss')} / {last.get('rewards/margins')} / {last.get('rewards/accuracies')} |",
    ]
    (adapter / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
