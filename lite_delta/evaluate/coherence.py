"""Is the student still an assistant? Two coherence figures beside the utility, for every student.

A style utility can be met by breaking the model: DPO on list-item pairs found that empty ``1.`` lines and
``1.1.1.1`` count as list items. So every held-out answer gets two figures that the utility does not see:

- **degenerate** (a rule, 0 or 1 per answer, ``lite_delta.degenerate``): fewer than 5 real words; or one line
  making up more than half of 4+ non-blank lines; or more than half of the word 3-grams repeats of others
  (20+ words); or fewer than half of the whitespace-separated tokens holding a real word (symbol salad).
- **relevance** (nats per answer token, under the *base* student): how much the prompt explains the answer,
  ``mean_t [log p(token | this prompt) - log p(token | an empty prompt)]`` over the answer's opening
  (``RELEVANCE_CHARS``). A helpful answer about houseplants is far likelier after the houseplant question
  than after nothing; ``1.1.1.1`` loops, word salad and off-topic text are about as likely either way, so
  they score near 0. (The plain per-token likelihood of the
  answer does not separate a collapsed student: repeated markers are easy to predict once started.)

Both are averaged per prompt, then compared with the base student's by paired bootstrap over prompts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lite_delta.degenerate import RULE, degenerate_reason  # noqa: F401 -- re-exported: the rule lives below the stages
from lite_delta.files import write_json

log = logging.getLogger(__name__)

# The demo's coherence bounds for a tuned student, against the base student on the same prompts and seeds
# (paired point estimates): at most this many points more degenerate answers, at most this much less relevance.
RELEVANCE_CHARS = 300  # relevance reads each answer's first ~300 characters (~64 tokens), cut at a space:
# collapse and salad show from the start, and a forward pass over every whole answer, twice, would cost the demo
# minutes on 2 cores
DEGENERATE_MARGIN = 0.05
RELEVANCE_MARGIN = 0.10
RESULT_FILE = "coherence.json"


def opening(answer: str, chars: int = RELEVANCE_CHARS) -> str:
    """The answer's first `chars` characters, cut back to the last whitespace (the whole answer if shorter)."""
    if len(answer) <= chars:
        return answer
    cut = answer[:chars]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    return cut[:space] if space > 0 else cut


def relevance_scores(engine, items: list[tuple[list[dict], str]], *, progress: bool = True) -> list[float]:
    """Per (messages, answer): mean over the answer's tokens of log p(token | messages) - log p(token | an empty
    user turn), under `engine` (the base student: llama.cpp's or transformers', see ``evaluate.engines``) with
    its chat template. Each context is evaluated once for all the answers that follow it."""
    from lite_delta.evaluate.tasks import Prompt
    from lite_delta.progress import progress_bar

    items = [(messages, opening(answer)) for messages, answer in items]
    by_context: dict[str, list[int]] = {}
    contexts: dict[str, tuple] = {}
    for i, (messages, _) in enumerate(items):
        key = json.dumps(messages, sort_keys=True)
        by_context.setdefault(key, []).append(i)
        contexts[key] = tuple(messages)
    given = [0.0] * len(items)
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("coherence: relevance", total=2 * len(items), rate="")
        for key, indices in by_context.items():
            scores = engine.loglikelihood(Prompt(messages=contexts[key]), [items[i][1] for i in indices], per_token=True)
            for i, value in zip(indices, scores):
                given[i] = value
            bar.update(task, advance=len(indices))
        empty: list[float] = []
        nothing = Prompt(messages=({"role": "user", "content": ""},))
        for start in range(0, len(items), 16):  # in chunks, so the bar moves
            chunk = [answer for _, answer in items[start:start + 16]]
            empty += engine.loglikelihood(nothing, chunk, per_token=True)
            bar.update(task, advance=len(chunk))
    # an empty answer scores 0 on both sides: the prompt explains nothing of it
    return [g - e for g, e in zip(given, empty)]


def relevance_judge(model: str, chat_template_kwargs: dict | None = None, *, progress: bool = True):
    """`relevance_scores` under `model` (a GGUF reference, read as the evaluation reads it:
    ``models.derive.batched_gguf``) through llama.cpp, as a function of (messages, answer) items: the pair
    stage's relevance gate. The model is opened for each call and closed after it."""
    def judge(items: list[tuple[list[dict], str]]) -> list[float]:
        from lite_delta.evaluate.engines import LlamaCppEngine
        from lite_delta.models.derive import batched_gguf

        engine = LlamaCppEngine(batched_gguf(model)[0], chat_template_kwargs=chat_template_kwargs)
        try:
            return relevance_scores(engine, items, progress=progress)
        finally:
            engine.close()
    return judge


def _digest(samples: dict[str, dict]) -> str:
    import hashlib

    h = hashlib.sha256()
    for key in sorted(samples):
        h.update(f"{key}\0{samples[key]['completion']}\0".encode())
    return h.hexdigest()[:16]


def coherence_eval(runs: dict[str, Path], messages: dict[str, list[dict]], *, judge: dict,
                   open_judge: Callable, out: Path, progress: bool = True) -> dict:
    """Both figures for every held-out answer of every student.

    ``runs``: student name -> its utility folder (``samples.jsonl``); ``messages``: prompt id -> the prompt's
    messages; ``judge``: what names the relevance judge (the base student, its engine and template variables);
    ``open_judge()``: opens that engine, only when there is something to score.
    Writes ``out/coherence.json``; a rerun over the same answers and judge reads it back.
    """
    from lite_delta.evaluate.utility import SAMPLES_FILE, read_samples

    samples = {name: read_samples(Path(folder) / SAMPLES_FILE) for name, folder in runs.items()}
    settings = {"judge": judge,
                "answers": {name: _digest(s) for name, s in samples.items()},
                "relevance_chars": RELEVANCE_CHARS,
                "rule": RULE}
    path = Path(out) / RESULT_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
            if previous.get("settings") == settings:
                return previous
        except ValueError:
            pass
    keys = [(name, key) for name, s in samples.items() for key in sorted(s)]
    items = [(messages[samples[name][key]["prompt_id"]], samples[name][key]["completion"]) for name, key in keys]
    engine = open_judge()
    try:
        relevance = relevance_scores(engine, items, progress=progress)
    finally:
        engine.close()
    per_sample: dict[str, dict] = {name: {} for name in samples}
    for (name, key), (_, text), value in zip(keys, items, relevance):
        per_sample[name][key] = {"degenerate": degenerate_reason(text), "relevance": round(value, 5)}
    result = {"settings": settings, "per_sample": per_sample}
    write_json(path, result)
    return result


def per_prompt(utility: dict, figures: dict[str, dict], k: int) -> dict[str, dict]:
    """Per prompt: the student's mean degenerate share and relevance over its samples, and the same two figures
    for the answers pairing would pick from it (best and worst of each block of k by utility score, the first
    on ties): the chosen and rejected columns."""
    out = {}
    for prompt_id, row in utility["per_prompt"].items():
        n = len(row["scores"])
        values = [figures[f"{prompt_id}:{s}"] for s in range(n)]
        deg = np.array([v["degenerate"] is not None for v in values], dtype=float)
        rel = np.array([v["relevance"] for v in values])
        blocks = np.array(row["scores"][: n // k * k]).reshape(-1, k)
        best = [b * k + int(np.argmax(block)) for b, block in enumerate(blocks)]
        worst = [b * k + int(np.argmin(block)) for b, block in enumerate(blocks)]
        out[prompt_id] = {
            "degenerate": float(deg.mean()), "relevance": float(rel.mean()),
            "chosen": {"degenerate": float(deg[best].mean()), "relevance": float(rel[best].mean())},
            "rejected": {"degenerate": float(deg[worst].mean()), "relevance": float(rel[worst].mean())},
        }
    return out
