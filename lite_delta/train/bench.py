"""`lite-delta bench train`: tokens/s, seconds per step and peak GPU memory of QLoRA DPO steps, beside the
planner's estimate for the same settings.

Every synthetic pair is exactly `max_length` tokens per side (prompt + answer + EOS), so the step is the
worst case the settings allow. The student loads once per backend (as the train stage loads it: Unsloth
4-bit, or PEFT with NF4 on a GPU and full precision on the CPU, or as `quantization` says); each
(max_length, batch) setting then runs `warmup` untimed and `steps` timed optimizer steps in a fresh
DPOTrainer with a fresh adapter, smallest setting first so the allocator's reserve reflects the setting
measured. Between settings the model goes back to what the loader gave: TRL wraps a plain model in a new
LoRA adapter (PEFT backend: unloaded again afterwards) and adds a frozen "ref" copy to an adapter that is
already there (Unsloth's PeftModel: deleted again afterwards), so every setting trains as the train stage does.
`--backend both` runs each backend in its own process
(Unsloth patches trl and transformers as it is imported). Results are written after every setting, so a
run cut short keeps what it finished.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lite_delta.errors import LiteDeltaError
from lite_delta.files import write_json

BACKENDS = ("unsloth", "peft")
UNITS = (" the", " a", " and", " of", " x")  # filler words; two that tokenize one token each are used


def _one_token_units(tokenizer) -> tuple[str, str]:
    units = [u for u in UNITS if len(tokenizer(u * 8, add_special_tokens=False)["input_ids"]) == 8]
    if len(units) < 2:
        raise LiteDeltaError("the student's tokenizer splits every filler word: cannot build exact-length pairs")
    return units[0], units[1]


def synthetic_pairs(tokenizer, max_length: int, n_pairs: int) -> list[dict]:
    """Plain-text pairs whose prompt + answer + EOS is exactly `max_length` tokens on both sides, as TRL
    tokenizes them (the prompt takes half)."""
    eos = tokenizer.eos_token or ""
    prompt_unit, answer_unit = _one_token_units(tokenizer)

    def length(prompt: str, answer: str) -> int:
        return len(tokenizer(prompt + answer + eos)["input_ids"])

    prompt = prompt_unit * (max_length // 2)
    n = max_length - max_length // 2
    for _ in range(8):  # special tokens and merges at the joins: correct the count until it is exact
        diff = max_length - length(prompt, answer_unit * n)
        if diff == 0:
            break
        n += diff
    if n <= 0 or length(prompt, answer_unit * n) != max_length:
        raise LiteDeltaError(f"cannot build pairs of exactly {max_length} tokens with this tokenizer")
    chosen, rejected = answer_unit * n, prompt_unit * n
    if length(prompt, rejected) != max_length:
        rejected = answer_unit * (n - 1) + prompt_unit
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected} for _ in range(n_pairs)]


class _StepTimer:
    """Seconds of each optimizer step (the GPU synchronized at both ends)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._sync()
                timer.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer._sync()
                timer.seconds.append(time.perf_counter() - timer.started)

        self.callback = Callback()
        self.seconds: list[float] = []
        self.started = 0.0

    @staticmethod
    def _sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def _planner(student: str, batch: int, max_length: int, lora_r: int, backend: str) -> dict:
    from lite_delta.train.plan import estimate, load_shapes

    est = estimate(load_shapes(student, local_only=True), batch_size=batch, max_length=max_length, lora_r=lora_r,
                   backend=backend)
    parts = {k: round(getattr(est, k), 3) for k in ("weights_gib", "adapter_gib", "activations_gib",
                                                     "checkpoints_gib", "logits_gib", "context_gib", "host_gib")}
    return {"total_gib": round(est.total_gib, 3), **parts}


def bench_settings(max_lengths: list[int], batches: list[int]) -> list[tuple[int, int]]:
    return sorted({(n, b) for n in max_lengths for b in batches}, key=lambda s: (s[0] * s[1], s[0]))


def bench_train(
    student: str,
    *,
    max_lengths: list[int],
    batches: list[int],
    backend: str = "auto",
    steps: int = 3,
    warmup: int = 1,
    lora_r: int = 16,
    precompute_ref_log_probs: bool = False,
    precision: str = "auto",
    quantization: str = "auto",
    out: Path | None = None,
    timeout_s: float | None = None,
    report_to: list[str] | None = None,
    run_name: str | None = None,
) -> dict:
    """Measure every (max_length, batch) setting on one backend, or on both (`backend="both"`).
    `precision` and `quantization` as the recipe's train fields (fp16 on a bf16 card: the T4 path, forced).
    `report_to`: trackers as the train stage's (TensorBoard: <out's folder>/tensorboard/<run name>-<setting>)."""
    from lite_delta.train.trainer_args import checked_report_to

    checked_report_to(report_to or ["none"], field="--report-to")  # before any model loads
    common = dict(max_lengths=max_lengths, batches=batches, steps=steps, warmup=warmup, lora_r=lora_r,
                  precompute_ref_log_probs=precompute_ref_log_probs, precision=precision, quantization=quantization,
                  out=out, report_to=report_to or ["none"], run_name=run_name or "bench-train")
    if backend == "both":
        return _bench_both(student, timeout_s=timeout_s, **common)
    return _bench_backend(student, requested=backend, **common)


def _bench_backend(student, *, max_lengths, batches, requested, steps, warmup, lora_r, precompute_ref_log_probs,
                   precision, quantization, out, report_to, run_name) -> dict:
    import torch

    from lite_delta.environment import environment
    from lite_delta.models.student import prepare_student
    from lite_delta.precision import device_capability, resolve_precision
    from lite_delta.train.backends import import_unsloth, resolve_backend, resolve_quantization

    cuda = torch.cuda.is_available()
    backend = resolve_backend(requested, cuda)
    if backend == "unsloth":
        import_unsloth()  # before anything imports trl, peft or transformers
    capability, device = device_capability()
    precision = resolve_precision(precision, capability, device)
    quantization = resolve_quantization(quantization, backend, cuda)
    work = Path(tempfile.mkdtemp(prefix="lite-delta-bench-train-"))
    student_path = prepare_student(student, work / "student")
    result = {
        "benchmark": "train",
        "student": student,
        "backend": backend,
        "device": device,
        "precision": precision,
        "quantization": quantization,
        "steps": steps,
        "warmup_steps": warmup,
        "lora_r": lora_r,
        "loss": "sigmoid_norm",
        "precompute_ref_log_probs": precompute_ref_log_probs,
        "environment": environment(),
        "runs": [],
    }

    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from lite_delta.config import TrainConfig
    from lite_delta.precision import mixed_precision
    from lite_delta.train.backends import fp32_trainable_weights, load_student, trainable_dtypes
    from lite_delta.train.trainer_args import TENSORBOARD_DIR, checked_report_to, use_tensorboard_dir

    cfg = TrainConfig(student=student_path, pairs=work / "pairs.jsonl", out=work, backend=backend,
                      max_length=max(max_lengths), lora_r=lora_r, lora_alpha=2 * lora_r)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    autocast = mixed_precision(precision)  # the device's (Unsloth's CPU mode reports its own dtype below)
    model, tokenizer, lora, precision = load_student(backend, student_path, cfg, precision, cuda, tokenizer,
                                                     quantization=quantization)
    result["precision"] = precision
    result["load_seconds"] = round(time.perf_counter() - started, 2)

    for max_length, batch in bench_settings(max_lengths, batches):
        run = {"backend": backend, "max_length": max_length, "batch": batch,
               "planner": _planner(student_path, batch, max_length, lora_r, backend)}
        trainer = None
        try:
            rows = synthetic_pairs(tokenizer, max_length, batch * (warmup + steps))
            args = DPOConfig(
                output_dir=str(work / "checkpoints"), per_device_train_batch_size=batch,
                gradient_accumulation_steps=1, learning_rate=1e-5, lr_scheduler_type="constant",
                max_steps=warmup + steps, beta=5.0, loss_type="sigmoid_norm", max_length=max_length,
                precompute_ref_log_probs=precompute_ref_log_probs,
                gradient_checkpointing=cuda and backend == "peft",  # Unsloth sets its own (as the train stage)
                logging_steps=1, save_strategy="no", disable_tqdm=True, use_cpu=not cuda,
                adam_beta2=0.95, seed=0, **autocast, report_to=checked_report_to(report_to, field="--report-to"),
                run_name=f"{run_name}-{backend}-L{max_length}-b{batch}",
            )
            timer = _StepTimer()
            if cuda:
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer, peft_config=lora, callbacks=[timer.callback])
            trainer.remove_callback(PrinterCallback)
            use_tensorboard_dir(trainer, (Path(out).parent if out is not None else work) / TENSORBOARD_DIR
                                / args.run_name, None, True)
            fp32_trainable_weights(trainer)  # as the train stage: fp32 master weights for a 4-bit base
            run["trainable_dtype"] = trainable_dtypes(trainer.model)
            lengths = {len(r["prompt_ids"]) + len(r[k]) for r in trainer.train_dataset for k in ("chosen_ids",
                                                                                                 "rejected_ids")}
            if lengths != {max_length}:
                raise LiteDeltaError(f"synthetic pairs came out at {sorted(lengths)} tokens, not {max_length}")
            trainer.train()
            timed = timer.seconds[warmup:]
            per_step = sum(timed) / len(timed)
            tokens = 2 * batch * max_length  # chosen and rejected, through the policy
            run.update({
                "tokens_per_step": tokens,
                "seconds_per_step": round(per_step, 4),
                "tokens_per_s": round(tokens / per_step, 1),
                "step_seconds": [round(s, 4) for s in timer.seconds],
                "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
            })
            if cuda:
                allocated = torch.cuda.max_memory_allocated() / 1024**3
                run.update({
                    "peak_allocated_gib": round(allocated, 3),
                    "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 1024**3, 3),
                    "measured_over_planner": round(allocated / run["planner"]["total_gib"], 3),
                })
            else:
                run.update({"peak_allocated_gib": None, "peak_reserved_gib": None})
        except torch.OutOfMemoryError:
            run["error"] = "CUDA out of memory"
        finally:
            if trainer is not None:
                model = _as_loaded(trainer.model, lora)
            del trainer
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        result["runs"].append(run)
        if out is not None:
            _write(out, result)
    return result


def _as_loaded(model, lora):
    """The model as the loader gave it, for the next setting's trainer: without the adapter TRL wrapped it in
    (`lora` given: PEFT), or without the frozen "ref" adapter TRL added beside the loader's own (Unsloth)."""
    if lora is not None and hasattr(model, "unload"):
        return model.unload()
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
    return model


def _write(out: Path, result: dict) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)


def _bench_both(student, *, max_lengths, batches, steps, warmup, lora_r, precompute_ref_log_probs, precision,
                quantization, out, timeout_s, report_to, run_name) -> dict:
    """Each backend in its own process; one file per backend beside `out`, merged into `out`."""
    folder = Path(out).parent if out is not None else Path(tempfile.mkdtemp(prefix="lite-delta-bench-train-"))
    stem = Path(out).stem if out is not None else "bench-train"
    merged = {"benchmark": "train", "student": student, "backends": {}, "runs": []}
    deadline = time.monotonic() + timeout_s if timeout_s else None
    for i, backend in enumerate(BACKENDS):
        timeout = max(1.0, (deadline - time.monotonic()) / (len(BACKENDS) - i)) if deadline else None
        part = folder / f"{stem}-{backend}.json"
        command = [sys.executable, "-m", "lite_delta.cli", "bench", "train", "--student", student,
                   "--backend", backend, "--steps", str(steps), "--warmup", str(warmup), "--lora-r", str(lora_r),
                   "--precision", precision, "--quantization", quantization, "--out", str(part)]
        command += [x for n in max_lengths for x in ("--max-length", str(n))]
        command += [x for b in batches for x in ("--batch", str(b))]
        command += [x for r in report_to for x in ("--report-to", r)] + ["--run-name", run_name]
        if precompute_ref_log_probs:
            command.append("--precompute-ref")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            error = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]
        except subprocess.TimeoutExpired:
            error = f"stopped after {timeout:.0f} s"
        result = json.loads(part.read_text(encoding="utf-8")) if part.is_file() else {"runs": []}
        if error:
            result["error"] = error
        merged["backends"][backend] = {k: v for k, v in result.items() if k != "runs"}
        merged["runs"] += result["runs"]
        if out is not None:
            _write(out, merged)
    return merged


def summary_lines(result: dict) -> list[str]:
    lines = []
    for backend, info in result.get("backends", {}).items():
        if info.get("error"):
            lines.append(f"{backend}: {info['error']}")
    for r in result["runs"]:
        head = f"{r['backend']:<7} max_length {r['max_length']:>5} batch {r['batch']}: "
        if "error" in r:
            lines.append(head + r["error"])
            continue
        memory = (f"peak {r['peak_allocated_gib']:.2f} GiB allocated, {r['peak_reserved_gib']:.2f} reserved"
                  if r.get("peak_allocated_gib") is not None else "no GPU memory figure (CPU)")
        lines.append(head + f"{r['tokens_per_s']:.1f} tok/s, {r['seconds_per_step']:.3f} s/step, {memory}; "
                     f"planner {r['planner']['total_gib']:.2f} GiB")
    return lines
