"""Trainer callbacks: the per-step JSON log (with tokens/s, peak memory, health warnings) and a progress bar."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from lite_delta.files import write_text
from lite_delta.train.health import check, check_held_out, check_probe, probe_broken
from lite_delta.train.probe import probe_every

log = logging.getLogger(__name__)

KEEP = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "learning_rate",
        "grad_norm")  # grad_norm: the step's gradient before clipping (spikes; equal whatever the process count)
# TRL's evaluation on the held-out pairs (train.eval_fraction), merged into the line of the step it ran after
KEEP_EVAL = ("eval_loss", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins",
             "eval_rewards/accuracies")


class StepLog(TrainerCallback):
    """One JSON line per optimizer step in train_log.jsonl; on resume, lines past the checkpoint are
    dropped first, so the log never holds a step twice. Health warnings go into the log and `warnings`.
    Across processes every one keeps the (already gathered) records; only the main one (`main`) writes and warns."""

    def __init__(self, path: Path, *, loss_type: str | list[str], main: bool = True, beta: float | None = None,
                 probe=None, probe_steps: int | None = None, stop_on_probe: bool = False, contrast: bool = False):
        self.path = path
        self.contrast = contrast  # the pairs hold contrast pairs: health's reward rules are not read
        self.loss_type = loss_type
        self.beta = beta
        self.main = main
        self.records: list[dict] = []
        self.warnings: list = []
        self.probe = probe  # a GreedyProbe (probe.py), run every `probe_steps` steps (unset: a few per run)
        self.probe_steps = probe_steps
        self.stop_on_probe = stop_on_probe  # select: probe: stop at the first broken probe, keep the last good step
        self.probed: dict | None = None  # the probe of the step about to be logged

    def on_train_begin(self, args, state, control, **kwargs):
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.main and self.path.exists() else []
        self.records = [r for r in map(json.loads, lines) if r["step"] <= state.global_step]
        if self.main:
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
        self.warnings = []
        self.started = self.last_time = time.perf_counter()
        self.last_tokens = 0.0 if state.global_step == 0 else None  # TRL's count restarts on resume
        loader = kwargs.get("train_dataloader")
        batches = len(loader) if loader is not None else state.max_steps * args.gradient_accumulation_steps
        self.steps_per_epoch = max(1, -(-batches // args.gradient_accumulation_steps))
        self.warmup_steps = args.get_warmup_steps(state.max_steps)
        self.total_steps = state.max_steps
        if self.probe is not None:
            self.probe_every = probe_every(self.probe_steps, state.max_steps)
            self.probe.resume(state.global_step)
            if self.probe.reference is None:  # the student before training: the adapter switched off
                self.probe.run(kwargs["model"], state.global_step, adapter=False)
            if self.stop_on_probe:  # where training starts (or resumes): no probe before it has broken
                self.probe.keep(kwargs["model"], state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.probe is None or not (step % self.probe_every == 0 or step == state.max_steps):
            return
        self.probed = self.probe.run(kwargs["model"], step)
        if not self.stop_on_probe:
            return
        if probe_broken(self.probed, self.probe.reference):
            self.probe.stopped_at = step
            control.should_training_stop = True
            log.warning("select: probe: the greedy probe broke at step %d; training stops and step %d's adapter is "
                        "kept", step, self.probe.kept_step)
        else:
            self.probe.keep(kwargs["model"], step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_loss" in logs:
            self._held_out(state.global_step, logs)
        if not logs or "loss" not in logs:
            return
        import torch

        now = time.perf_counter()
        record = {"step": state.global_step, **{k: float(logs[k]) for k in KEEP if k in logs}}
        tokens = logs.get("num_tokens")  # TRL's running count of tokens trained on
        if tokens is not None:
            tokens = float(tokens)
            if self.last_tokens is not None and now > self.last_time:
                record["tokens_per_s"] = round((tokens - self.last_tokens) / (now - self.last_time), 1)
            self.last_tokens = tokens
        self.last_time = now
        record["seconds"] = round(now - self.started, 2)
        if torch.cuda.is_available():
            record["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        self.records.append(record)
        new = check(self.records, loss_type=self.loss_type, warmup_steps=self.warmup_steps,
                    steps_per_epoch=self.steps_per_epoch, already={w.kind for w in self.warnings},
                    beta=self.beta, total_steps=self.total_steps, contrast=self.contrast)
        if self.probed is not None:  # run at this step's end, just before its log
            record["probe_degenerate"] = self.probed["degenerate"]
            new += check_probe(self.probed, self.probe.reference, already={w.kind for w in self.warnings})
            self.probed = None
        self._warn(new, record)
        if self.main:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _warn(self, new: list, record: dict) -> None:
        """New health warnings: said once (main process), named in the step's line, kept for train.json."""
        for warning in new:
            if self.main:
                log.warning("training health: %s", warning.message)
            record.setdefault("warnings", []).append(warning.kind)
        self.warnings.extend(new)

    def _held_out(self, step: int, logs: dict) -> None:
        """The evaluation runs right after its step is logged: its figures join that step's line (rewritten
        whole, so each step stays one line), and the held-out health rules read them."""
        values = {k: float(logs[k]) for k in KEEP_EVAL if k in logs}
        if self.records and self.records[-1]["step"] == step:
            record = self.records[-1]
        else:  # eval_on_start (step 0), or an evaluation with no step logged before it
            record = {"step": step}
            self.records.append(record)
        record.update(values)
        new = check_held_out(self.records, beta=self.beta, already={w.kind for w in self.warnings})
        self._warn(new, record)
        if self.main:
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


class ProgressBar(TrainerCallback):
    """step / total, loss, margin, tokens/s, ETA, and the latest health warning, on one line."""

    def __init__(self, step_log: StepLog, console=None, label: str = "train"):
        self.step_log = step_log
        self.console = console
        self.label = label
        self.progress = None

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from lite_delta.progress import progress_bar

        self.progress = progress_bar(self.console, columns=(
            TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.description}"),
        ))
        self.progress.start()
        self.task = self.progress.add_task("", total=state.max_steps, completed=state.global_step, label=self.label)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.step_log.records or self.step_log.records[-1]["step"] != state.global_step:
            return
        r = self.step_log.records[-1]
        if "loss" not in r:  # an evaluation before any step (eval_on_start)
            return
        text = f"loss {r['loss']:.4f}"
        if "rewards/margins" in r:
            text += f"  margin {r['rewards/margins']:+.3f}"
        held = next((e for e in reversed(self.step_log.records) if "eval_rewards/margins" in e), None)
        if held is not None:
            text += f"  held-out {held['eval_rewards/margins']:+.3f}"
        if "tokens_per_s" in r:
            text += f"  {r['tokens_per_s']:.0f} tok/s"
        if self.step_log.warnings:
            text += f"  [yellow]! {self.step_log.warnings[-1].kind.replace('_', ' ')}[/yellow]"
        self.progress.update(self.task, completed=state.global_step, description=text)

    def on_train_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)
        self.close()

    def close(self) -> None:
        """Stop the bar (or the plain lines' timer); the stage calls this when training raises too."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
