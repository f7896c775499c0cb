"""Chat templates: rendered from the model's own Jinja template in a sandbox, never a guessed default."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lite_delta.errors import LiteDeltaError


def _raise_exception(message: str):
    raise TemplateError(message)


def _tojson(value, indent=None, ensure_ascii=False, separators=None, sort_keys=False):
    # Hugging Face templates expect json.dumps semantics, not Jinja's HTML-safe tojson.
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Prepend a system message unless the conversation already starts with one."""
    if not system or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]


def render_chat(
    template: str,
    messages: list[dict],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    template_kwargs: dict | None = None,
    source: str = "the model",
) -> str:
    """Render a conversation with a chat template, as transformers' apply_chat_template does.

    ``template_kwargs``: more variables for the template (a recipe's chat_template_kwargs, e.g. Qwen3's
    enable_thinking), as apply_chat_template's extra keyword arguments; they never replace the four above."""
    try:
        return _compile(template).render({
            **(template_kwargs or {}),
            "messages": messages,
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_generation_prompt": add_generation_prompt,
        })
    except TemplateError as exc:
        raise LiteDeltaError(f"the chat template of {source} failed to render: {exc}") from None
