"""What the student is trained on, token by token: the chat template, prompt budgets, BOS/EOS checks.

Pairs cross from the teachers to the student as messages, never as rendered text, so the student's
own template (from its tokenizer, or the recipe's `chat_template`) renders every training sequence,
exactly as TRL's DPOTrainer does: prompt with the generation header, prompt + answer without it.
A row's `chat_template_kwargs` (the train config's, e.g. Qwen3's enable_thinking) go to every rendering,
ours and TRL's alike.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lite_delta.errors import LiteDeltaError

CHECKED_ROWS = 64


def template_for(tokenizer, override: str | None, student: str) -> tuple[str, str]:
    """Set and return the student's chat template and where it came from ('tokenizer' or 'recipe')."""
    if override:
        path = Path(override)
        text = path.read_text(encoding="utf-8") if path.suffix in (".jinja", ".j2") and path.is_file() else override
        tokenizer.chat_template = text
        return text, "recipe"
    if not tokenizer.chat_template:
        raise LiteDeltaError(
            f"student {student} has no chat template: set `chat_template` in the train config (the Jinja template "
            "the student was fine-tuned with, or a .jinja file); lite-delta never guesses one"
        )
    return tokenizer.chat_template, "tokenizer"


def template_sha(template: str) -> str:
    return hashlib.sha256(template.encode()).hexdigest()[:16]


def with_template_kwargs(rows: list[dict], kwargs: dict) -> list[dict]:
    """Rows carrying the chat template kwargs in TRL's per-row column (no column while there are none)."""
    return [{**row, "chat_template_kwargs": dict(kwargs)} for row in rows] if kwargs else rows


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def render_ids(tokenizer, messages: list[dict], *, generation_prompt: bool = False,
               template_kwargs: dict | None = None) -> list[int]:
    return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                              **(template_kwargs or {})))


def fit_prompt(tokenizer, messages: list[dict], budget: int, template_kwargs: dict | None = None) -> list[dict] | None:
    """The prompt cut to `budget` tokens as rendered: earlier turns go first (a system message stays),
    then the start of the last message, so its end (usually the question) is kept. None if even an
    empty last message does not fit."""
    if len(render_ids(tokenizer, messages, generation_prompt=True, template_kwargs=template_kwargs)) <= budget:
        return messages
    messages = [dict(m) for m in messages]
    while len(messages) > 1 and len(render_ids(tokenizer, messages, generation_prompt=True, template_kwargs=template_kwargs)) > budget:
        first = 1 if messages[0]["role"] == "system" else 0
        if first == len(messages) - 1:
            break
        del messages[first]
    last = messages[-1]
    content = tokenizer.encode(last["content"], add_special_tokens=False)
    overhead = len(render_ids(tokenizer, messages[:-1] + [{**last, "content": ""}], generation_prompt=True,
                              template_kwargs=template_kwargs))
    keep = budget - overhead
    while keep > 0:  # decoding and re-encoding can merge tokens differently: shrink until it fits
        last["content"] = tokenizer.decode(content[-keep:])
        over = len(render_ids(tokenizer, messages, generation_prompt=True, template_kwargs=template_kwargs)) - budget
        if over <= 0:
            return messages
        keep -= max(1, over)
    return None


def fit_prompts(rows: list[dict], tokenizer, budget: int) -> tuple[list[dict], int, int]:
    """Every prompt within `budget` tokens: (rows, how many were truncated, how many dropped)."""
    kept, truncated, dropped = [], 0, 0
    for row in rows:
        prompt = fit_prompt(tokenizer, row["prompt"], budget, row.get("chat_template_kwargs"))
        if prompt is None:
            dropped += 1
            continue
        truncated += prompt is not row["prompt"]
        kept.append({**row, "prompt": prompt})
    return kept, truncated, dropped


def end_token_ids(tokenizer, student_path: str) -> set[int]:
    """Tokens that end an assistant turn: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(student_path).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except OSError:
        pass
    return ids


def check_sequences(tokenizer, rows: list[dict], end_ids: set[int]) -> None:
    """No doubled BOS, and every answer ends with an end-of-turn token (only whitespace may follow)."""
    bos = tokenizer.bos_token_id
    for n, row in enumerate(rows[:CHECKED_ROWS], 1):
        for side in ("chosen", "rejected"):
            ids = render_ids(tokenizer, row["prompt"] + row[side], template_kwargs=row.get("chat_template_kwargs"))
            if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
                raise LiteDeltaError(
                    f"pair {n}: the student's chat template writes BOS and the tokenizer adds another: "
                    "set `chat_template` without the leading bos_token in the train config"
                )
            tail = list(ids)
            while tail and tokenizer.decode(tail[-1:]).strip() == "" and tail[-1] not in end_ids:
                tail.pop()
            if not tail or tail[-1] not in end_ids:
                shown = tokenizer.decode(ids[-8:])
                raise LiteDeltaError(
                    f"pair {n} ({side}): the student's chat template does not end an assistant turn with an end "
                    f"token (sequence ends {shown!r}); trained on it, the student would never learn to stop. "
                    "Set `chat_template` in the train config to one that writes the EOS token after each answer"
                )


def rendered_pair(tokenizer, row: dict) -> str:
    """One pair as the student sees it, special tokens visible."""
    parts = []
    for side in ("chosen", "rejected"):
        ids = render_ids(tokenizer, row["prompt"] + row[side], template_kwargs=row.get("chat_template_kwargs"))
        parts.append(f"===== prompt + {side} ({len(ids)} tokens) =====\n{tokenizer.decode(ids)}")
    return "\n\n".join(parts) + "\n"
