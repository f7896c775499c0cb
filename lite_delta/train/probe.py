"""The greedy probe: the student's own greedy answers to a few prompts, every few steps, by the degenerate rule.

The step log can look healthy while the student breaks: on the demo's pairs, runs whose reward margins stayed
small and whose held-out *pairs* kept improving still answered `1.1.1.1` or one item repeated nine times when
decoded greedily. The only sure sign is the answers themselves. So, with ``train.probe_prompts: N``, the train
stage answers N prompts greedily (held-out pairs' prompts first, then training ones spread over the set) with the
adapter switched off (the reference, once) and then every ``probe_steps`` steps with the adapter as trained so
far, and scores each answer with ``lite_delta.degenerate``. Every probe goes to probe.jsonl (answers included),
its count into the step's line of the step log, and health warns (``greedy_broken``) when the count rises past
the reference's. A probe costs N greedy answers of PROBE_TOKENS tokens through transformers (about 6 s for 8
answers of the demo's 135M student on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lite_delta.degenerate import degenerate_reason
from lite_delta.files import write_text
from lite_delta.train.sequences import render_ids
from lite_delta.train.split import prompt_key

PROBE_FILE = "probe.jsonl"
PROBE_TOKENS = 96  # as the export's quick check
PROBES_PER_RUN = 6  # probe_steps unset: this many probes over the run (and always at the last step)


def probe_rows(rows: list[dict], held_out: list[dict], n: int) -> list[dict]:
    """`n` distinct prompts ({prompt, chat_template_kwargs?}): the held-out pairs' first (the student never
    trained on them), then training prompts spread evenly over the set, in the pairs' order."""
    def distinct(source: list[dict]) -> list[dict]:
        found: dict[str, dict] = {}
        for row in source:
            found.setdefault(prompt_key(row), {k: row[k] for k in ("prompt", "chat_template_kwargs") if k in row})
        return list(found.values())

    chosen = distinct(held_out)[:n]
    taken = {prompt_key(c) for c in chosen}
    rest = [r for r in distinct(rows) if prompt_key(r) not in taken]
    want = n - len(chosen)
    if want > 0 and rest:
        stride = len(rest) / min(want, len(rest))
        chosen += [rest[int(i * stride)] for i in range(min(want, len(rest)))]
    return chosen


def probe_every(steps: int | None, total_steps: int) -> int:
    return steps or max(1, -(-total_steps // PROBES_PER_RUN))


class GreedyProbe:
    """Greedy answers of the model being trained to fixed prompts; `run` returns one probe.jsonl record."""

    def __init__(self, rows: list[dict], tokenizer, path: Path, *, end_ids: set[int], max_tokens: int = PROBE_TOKENS):
        self.rows = rows
        self.tokenizer = tokenizer
        self.path = path
        self.end_ids = sorted(end_ids) or None
        self.max_tokens = max_tokens
        self.records: list[dict] = []
        self.kept: dict = {}  # select: probe: the trainable weights of the last probed step that held
        self.kept_step: int | None = None
        self.stopped_at: int | None = None  # select: probe: the step whose probe broke, where training stopped
        # what a probe asks: an earlier attempt's records count only when they asked the same
        asked = json.dumps([[r["prompt"], r.get("chat_template_kwargs")] for r in rows] + [max_tokens], sort_keys=True)
        self.key = hashlib.sha256(asked.encode("utf-8")).hexdigest()[:16]

    @property
    def reference(self) -> dict | None:
        return next((r for r in self.records if r["adapter"] == "off"), None)

    def resume(self, step: int) -> None:
        """Keep the probes of steps up to the checkpoint (and the reference's) that asked what this one asks;
        drop the rest from the file."""
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
        self.records = [r for r in map(json.loads, lines)
                        if r.get("key") == self.key and (r["adapter"] == "off" or r["step"] <= step)]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def run(self, model, step: int, *, adapter: bool = True) -> dict:
        import contextlib

        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        prompts = [render_ids(self.tokenizer, r["prompt"], generation_prompt=True,
                              template_kwargs=r.get("chat_template_kwargs")) for r in self.rows]
        width = max(len(p) for p in prompts)
        device = next(model.parameters()).device
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        was_training = model.training
        off = model.disable_adapter() if not adapter and hasattr(model, "disable_adapter") else contextlib.nullcontext()
        model.eval()
        try:
            with off, torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_tokens,
                                     do_sample=False, pad_token_id=pad, eos_token_id=self.end_ids)
        finally:
            model.train(was_training)
        answers = [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out.tolist()]
        reasons = [degenerate_reason(a) for a in answers]
        record = {"step": step, "adapter": "on" if adapter else "off", "key": self.key,
                  "degenerate": sum(r is not None for r in reasons), "prompts": len(answers),
                  "answers": [{"prompt": r["prompt"][-1]["content"][:200], "answer": a, "degenerate": why}
                              for r, a, why in zip(self.rows, answers, reasons)]}
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return record

    def keep(self, model, step: int) -> None:
        """Remember the trainable weights (the adapter: small) as they are at `step`: select: probe's pick."""
        self.kept = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}
        self.kept_step = step

    def restore(self, model) -> None:
        """Put the kept weights back (training stopped at a broken probe)."""
        import torch

        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.kept:
                    p.copy_(self.kept[name].to(p.device))

    def summary(self) -> dict:
        """train.json's `probe`: the reference's count and each probe's, without the answers (probe.jsonl)."""
        ref = self.reference
        return {"prompts": len(self.rows), "file": PROBE_FILE,
                "reference_degenerate": ref["degenerate"] if ref else None,
                "steps": [{"step": r["step"], "degenerate": r["degenerate"]}
                          for r in self.records if r["adapter"] == "on"]}
