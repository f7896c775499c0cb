"""The train stage: LoRA DPO of the student on the weak pairs, with checkpoints, resume and a step log."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lite_delta.config import TrainConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.files import write_json
from lite_delta.train.pairs_io import load_pairs, pairs_stats
from lite_delta.train.student import prepare_student

log = logging.getLogger(__name__)

STEP_LOG = "train_log.jsonl"
KEEP = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "learning_rate")


def resolve_backend(requested: str, cuda: bool) -> str:
    if requested == "unsloth":
        raise LiteDeltaError("the unsloth backend is not built yet: use --backend peft (or auto)")
    return "peft"


def drop_long_prompts(rows: list[dict], tokenizer, max_prompt_tokens: int) -> tuple[list[dict], int]:
    """TRL 1.x has no max_prompt_length: prompts longer than the budget are dropped here, and counted."""
    kept = []
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        if len(ids) <= max_prompt_tokens:
            kept.append(row)
    return kept, len(rows) - len(kept)


def _step_log_callback(path: Path):
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        """One JSON line per logged step; on resume, lines past the checkpoint are dropped first."""

        def on_train_begin(self, args, state, control, **kwargs):
            lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
            kept = [line for line in lines if json.loads(line)["step"] <= state.global_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            self.started = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            import torch

            record = {"step": state.global_step, **{k: logs[k] for k in KEEP if k in logs}}
            record["seconds"] = round(time.perf_counter() - self.started, 2)
            if torch.cuda.is_available():
                record["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    return StepLog()


def _load_model(student: str, cuda: bool):
    import torch
    from transformers import AutoModelForCausalLM

    if not cuda:
        return AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    from transformers import BitsAndBytesConfig

    bf16 = torch.cuda.is_bf16_supported()
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
    )
    return AutoModelForCausalLM.from_pretrained(student, quantization_config=quant, device_map={"": 0})


def last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def train(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Train a LoRA adapter with DPO; returns the output folder (adapter/, train_log.jsonl, train.json)."""
    import torch

    out = Path(cfg.out)
    checkpoints = out / "checkpoints"
    if not resume and last_checkpoint(checkpoints):
        raise LiteDeltaError(f"{out} already has checkpoints: pass --resume to continue, or use a new --out")
    rows = load_pairs(cfg.pairs)
    cuda = torch.cuda.is_available()
    backend = resolve_backend(cfg.backend, cuda)
    out.mkdir(parents=True, exist_ok=True)
    student = prepare_student(cfg.student, out / "student")

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(student)
    if not tokenizer.chat_template:
        raise LiteDeltaError(f"student {cfg.student} has no chat template: train from an instruct/SFT model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_prompt = cfg.max_prompt_length or cfg.max_length // 2
    rows, dropped = drop_long_prompts(rows, tokenizer, max_prompt)
    if not rows:
        raise LiteDeltaError(f"every prompt in {cfg.pairs} is longer than {max_prompt} tokens: raise max_prompt_length")
    if not cuda:
        from lite_delta.train.trl_cpu import use_torch_logprob_without_gpu

        use_torch_logprob_without_gpu()
    precision = {}
    if cuda:
        precision = {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    args = DPOConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        beta=cfg.beta,
        loss_type=cfg.loss,
        max_length=cfg.max_length,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        use_cpu=not cuda,
        adam_beta2=0.95,  # the paper's AdamW betas (0.9, 0.95)
        **precision,
    )
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
        target_modules=cfg.lora_targets, task_type="CAUSAL_LM",
    )
    # With a PEFT model and no ref_model, TRL's reference is the student with the adapter disabled.
    trainer = DPOTrainer(
        model=_load_model(student, cuda),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[_step_log_callback(out / STEP_LOG)],
    )
    resume_from = last_checkpoint(checkpoints) if resume else None
    if resume and resume_from is None:
        log.warning("no checkpoint in %s: starting from the beginning", checkpoints)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    adapter = out / "adapter"
    trainer.save_model(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    summary = {
        "student": cfg.student,
        "student_path": student,
        "backend": backend,
        "config": cfg.model_dump(mode="json"),
        "pairs": {**pairs_stats(rows), "dropped_long_prompts": dropped},
        "steps": trainer.state.global_step,
        "resumed_from": resume_from,
        "seconds": round(time.perf_counter() - started, 1),
        "last_log": next((h for h in reversed(trainer.state.log_history) if "loss" in h), None),
    }
    write_json(out / "train.json", summary)
    _write_run_card(adapter, summary)
    return out


def _write_run_card(adapter: Path, summary: dict) -> None:
    cfg = summary["config"]
    last = summary["last_log"] or {}
    lines = [
        "---",
        f"base_model: {summary['student']}",
        "library_name: peft",
        "tags: [dpo, lora, delta-learning, lite-delta]",
        "---",
        "",
        f"# DPO LoRA adapter for {summary['student']}",
        "",
        "Trained by lite-delta on weak preference pairs (delta learning, Geng et al. 2025).",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {cfg[k]} |" for k in ("loss", "beta", "learning_rate", "lr_scheduler", "batch_size",
                                          "grad_accum", "max_length", "lora_r", "lora_alpha", "seed")),
        f"| pairs used | {summary['pairs']['rows']} (prompts over budget dropped: {summary['pairs']['dropped_long_prompts']}) |",
        f"| steps | {summary['steps']} |",
        f"| final loss / margin / accuracy | {last.get('loss')} / {last.get('rewards/margins')} / {last.get('rewards/accuracies')} |",
    ]
    (adapter / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
