"""Chat templates: rendered from the model's own Jinja template in a sandbox, never a guessed default.

A template comes from a GGUF file or a recipe: someone else's program. Jinja's sandbox keeps it from the
files and the interpreter; the bounds here keep it from the machine: at most ``MAX_TEMPLATE_STEPS`` template
lines per render (a loop of loops ends), no string or list built past ``MAX_VALUE_CHARS`` by ``*`` or ``+`` or
a width argument, no output past ``MAX_RENDER_CHARS``, and any exception it raises (``1 // 0``) is one
clear error naming the template's source.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from functools import lru_cache, wraps
from numbers import Number

from jinja2 import TemplateError
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lite_delta.errors import LiteDeltaError

MAX_TEMPLATE_STEPS = 1_000_000  # template lines run in one render; real chat templates run hundreds
MAX_VALUE_CHARS = 1_000_000  # one string or list a template builds, or a width it asks for
MAX_RENDER_CHARS = 4_000_000  # one rendered conversation
MAX_POWER = 4096  # exponents: 10 ** 10 ** 10 would never finish


class TemplateBudgetError(TemplateError):
    """A template asked for more time or memory than a chat prompt needs."""


_HUGE_WIDTH = re.compile(r"\d{7,}")  # a format width or precision of a million or more: '%9999999s', '{:>9999999}'


def _flat(values) -> list:
    """The values, with those inside a tuple, list or dict one level down ('%*s' % (10**9, 'x'), format_map)."""
    out = []
    for v in values:
        out.append(v)
        if isinstance(v, (tuple, list)):
            out.extend(v[:1000])
        elif isinstance(v, dict):
            out.extend(list(v.values())[:1000])
    return out


def _check_args(name: str, args: tuple, kwargs: dict) -> None:
    """Refuse, before it runs, a call that would build a value past MAX_VALUE_CHARS from small inputs."""
    values = _flat((*args, *kwargs.values()))
    if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_VALUE_CHARS for v in values):
        raise TemplateBudgetError(f"{name} with a number over {MAX_VALUE_CHARS:,}")
    if ("format" in name or "%" in name) and any(isinstance(v, str) and _HUGE_WIDTH.search(v) for v in values):
        raise TemplateBudgetError(f"{name} with a width over {MAX_VALUE_CHARS:,}")
    if "replace" in name:
        texts = [v for v in values if isinstance(v, str)]
        if len(texts) >= 3:  # (text, old, new): each match of old grows the text by len(new)
            text, old, new = texts[:3]
            matches = text.count(old) if old else len(text) + 1
            if len(text) + matches * len(new) > MAX_VALUE_CHARS:
                raise TemplateBudgetError(f"{name} building a value over {MAX_VALUE_CHARS:,} characters")


def _bounded_call(func):
    name = getattr(func, "__name__", "a filter")

    @wraps(func)
    def call(*args, **kwargs):
        _check_args(name, args, kwargs)
        return func(*args, **kwargs)
    return call


class _BoundedConcat(CodeGenerator):
    """``a ~ b``: joined through the environment, which checks the size first (``~`` is no binop to intercept)."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.concat_checked((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _ChatSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "+", "**", "%"})
    code_generator_class = _BoundedConcat

    def concat_checked(self, values: tuple) -> str:
        texts = [str(v) for v in values]
        if sum(map(len, texts)) > MAX_VALUE_CHARS:
            raise TemplateBudgetError(f"a value over {MAX_VALUE_CHARS:,} characters")
        return "".join(texts)

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, Number) and abs(right) > MAX_POWER:
            raise TemplateBudgetError(f"an exponent over {MAX_POWER}")
        if operator == "%" and isinstance(left, str):
            _check_args("the % operator", (left, right), {})  # '%999999999s' % x, '%*s' % (10**9, x)
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_VALUE_CHARS:
                    raise TemplateBudgetError(f"a value over {MAX_VALUE_CHARS:,} items")
        if (operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple))
                and len(left) + len(right) > MAX_VALUE_CHARS):
            raise TemplateBudgetError(f"a value over {MAX_VALUE_CHARS:,} items")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 -- Jinja's own signature
        name = getattr(__obj, "__name__", "a call")
        bound = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)  # str.format comes wrapped
        _check_args(name, (bound, *args), kwargs)  # a method's own text counts as an input
        return super().call(__context, __obj, *args, **kwargs)


def _raise_exception(message: str):
    raise TemplateError(message)


def _tojson(value, indent=None, ensure_ascii=False, separators=None, sort_keys=False):
    # Hugging Face templates expect json.dumps semantics, not Jinja's HTML-safe tojson.
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str):
    env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True)
    env.filters = {name: _bounded_call(f) for name, f in env.filters.items()}  # center(10**9), indent(10**9)
    env.filters["tojson"] = _bounded_call(_tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def control_text_in(messages, texts) -> str | None:
    """The first control-token text (``<|im_end|>``, ``<|im_start|>``, ...) inside a message's content, or None.

    The policy for special tokens in text: a rendered prompt is tokenized with special tokens parsed (the
    template's own markers must be), and transformers does the same; so a prompt or an answer whose text holds
    a marker would become a forged turn (a user-written system message, a fake end of the answer). Such a
    prompt is not sent to a teacher and such a pair is not trained on: both are dropped and counted."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            for text in texts:
                if text in content:
                    return text
    return None


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
    context = {**(template_kwargs or {}), "messages": messages, "bos_token": bos_token, "eos_token": eos_token,
               "add_generation_prompt": add_generation_prompt}
    try:
        return _bounded_render(_compile(template), context)
    except TemplateError as exc:  # the sandbox's SecurityError and our budget's errors among them
        raise LiteDeltaError(f"the chat template of {source} failed to render: {exc}") from None
    except Exception as exc:  # noqa: BLE001 -- {{ 1 // 0 }}, RecursionError, MemoryError, ...
        raise LiteDeltaError(f"the chat template of {source} failed to render: {type(exc).__name__}: "
                             f"{str(exc)[:120]}") from None


def _bounded_render(compiled, context: dict) -> str:
    """Render, counting template lines (a trace function on the template's own frames only) and output."""
    steps = [0]

    def count(frame, event, arg):
        if event == "line":
            steps[0] += 1
            if steps[0] > MAX_TEMPLATE_STEPS:
                raise TemplateBudgetError(f"more than {MAX_TEMPLATE_STEPS:,} template steps (a runaway loop)")
        return count

    def only_templates(frame, event, arg):
        return count if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(only_templates)
    try:
        parts, size = [], 0
        for part in compiled.generate(context):
            size += len(part)
            if size > MAX_RENDER_CHARS:
                raise TemplateBudgetError(f"a rendered prompt over {MAX_RENDER_CHARS:,} characters")
            parts.append(part)
        return "".join(parts)
    finally:
        sys.settrace(previous)
