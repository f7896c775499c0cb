"""Ollama Modelfiles that give the model the prompt the GGUF's own chat template gives it.

Ollama ignores the GGUF's Jinja template unless it recognises it, and its fallbacks drop the system
turn a template like SmolLM2's always inserts. So the Jinja template is translated into an Ollama
(Go) TEMPLATE for the two turn layouts lite-delta knows (ChatML: SmolLM2, Qwen2.5, Qwen3; Llama 3
headers), its default system prompt becomes the SYSTEM line (Ollama prepends it when a chat has no
system message), and the end-of-turn tokens become PARAMETER stop lines. A translation is written
only after the Jinja template and the translation, rendered on a few conversations, give the same
text; otherwise there is no TEMPLATE and the reason goes into the README.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from lite_delta.errors import LiteDeltaError
from lite_delta.inference.template import render_chat

log = logging.getLogger(__name__)

# name -> (text opening a turn of ROLE, text closing a turn); the assistant's opening is the generation prompt
LAYOUTS = {
    "chatml": ("<|im_start|>{role}\n", "<|im_end|>\n"),
    "llama3": ("<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>"),
}
_SYSTEM_PROBE = "You answer in one short paragraph."
# conversations both renderings must agree on: no system, a system, several turns with and without one
PROBES = [
    [{"role": "user", "content": "Name three fruits."}],
    [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "Name three fruits."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
]


@dataclass
class OllamaChat:
    """What a Modelfile needs to reproduce the GGUF's prompt: TEMPLATE, SYSTEM and stop tokens."""

    template: str | None  # Go template; None when the GGUF's template has no faithful translation
    system: str | None  # the default system prompt the GGUF's template inserts, or None
    stops: list[str] = field(default_factory=list)
    layout: str | None = None
    note: str = ""  # why there is no TEMPLATE


@dataclass
class _Gguf:
    template: str | None
    bos: str
    eos: str
    add_bos: bool


def _read_gguf(path: Path) -> _Gguf:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def value(key: str, default=None):
        f = fields.get(key)
        return f.contents() if f is not None else default

    tokens = value("tokenizer.ggml.tokens", [])

    def token(key: str) -> str:
        index = value(key)
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else ""

    arch = value("general.architecture")
    add_bos = value("tokenizer.ggml.add_bos_token")
    if add_bos is None:  # llama.cpp's default: SentencePiece vocabularies add BOS, BPE ones do not
        add_bos = value("tokenizer.ggml.model") == "llama" and arch != "qwen2"
    return _Gguf(value("tokenizer.chat_template"), token("tokenizer.ggml.bos_token_id"),
                 token("tokenizer.ggml.eos_token_id"), bool(add_bos))


def ollama_chat(gguf_path: str | Path) -> OllamaChat:
    """The Modelfile's TEMPLATE / SYSTEM / stops for a GGUF, from its chat template (checked by rendering)."""
    meta = _read_gguf(Path(gguf_path))
    stops = [meta.eos] if meta.eos else []
    if not meta.template:
        return OllamaChat(None, None, stops, note=f"{Path(gguf_path).name} has no chat template")
    for layout in LAYOUTS:
        chat = _translate(meta, layout)
        if chat is not None:
            return chat
    note = ("its chat template is neither ChatML nor Llama 3 headers (or inserts text, such as today's date, "
            "that an Ollama template cannot reproduce)")
    log.warning("no Ollama TEMPLATE for %s: %s; Ollama will use its own guess", Path(gguf_path).name, note)
    return OllamaChat(None, None, stops, note=note)


def _jinja(meta: _Gguf, messages: list[dict]) -> str:
    """The GGUF's template, as the text the model sees (a leading BOS that the tokenizer adds anyway removed)."""
    text = render_chat(meta.template, messages, bos_token=meta.bos, eos_token=meta.eos)
    return text[len(meta.bos):] if meta.add_bos and meta.bos and text.startswith(meta.bos) else text


def _translate(meta: _Gguf, layout: str) -> OllamaChat | None:
    opening, closing = LAYOUTS[layout]
    system_open = opening.format(role="system")
    try:
        plain, with_system = _jinja(meta, PROBES[0]), _jinja(meta, PROBES[1])
    except LiteDeltaError:
        return None
    if not with_system.startswith(system_open) or closing not in with_system:
        return None
    block = with_system[len(system_open): with_system.index(closing)]
    if not block.endswith(_SYSTEM_PROBE):
        return None
    prefix = block[: -len(_SYSTEM_PROBE)]  # text the template puts before every system prompt
    always, default = False, None
    if plain.startswith(system_open) and closing in plain:
        inserted = plain[len(system_open): plain.index(closing)]
        if not inserted.startswith(prefix):
            return None
        default = inserted[len(prefix):] or None
        always = default is None  # a system turn even with no system prompt at all
    today = datetime.now()
    if any(today.strftime(f) in prefix + (default or "") for f in ("%d %b %Y", "%Y-%m-%d", "%B %d, %Y")):
        return None  # the template writes today's date: a fixed TEMPLATE would be wrong tomorrow
    literals = [opening, closing, prefix, default or ""]
    if any("{{" in s or '"""' in s for s in literals):
        return None
    for probe in PROBES:
        try:
            if _jinja(meta, probe) != render_ollama(layout, probe, system=default, prefix=prefix, always=always):
                return None
        except LiteDeltaError:
            return None
    stops = [closing.strip()] + ([meta.eos] if meta.eos and meta.eos != closing.strip() else [])
    return OllamaChat(go_template(layout, prefix=prefix, always=always), default, stops, layout=layout)


def go_template(layout: str, *, prefix: str = "", always: bool = False) -> str:
    """The Ollama TEMPLATE: the system turn (all system messages, `.System`), then every other message
    in order, then the assistant's opening. Ollama has prepended the SYSTEM line when a chat has none."""
    opening, closing = LAYOUTS[layout]
    system = f"{opening.format(role='system')}{prefix}{{{{ .System }}}}{closing}"
    if not always:
        system = f"{{{{ if .System }}}}{system}{{{{ end }}}}"
    turn = f"{opening.format(role='{{ .Role }}')}{{{{ .Content }}}}{closing}"
    return (f"{system}{{{{ range .Messages }}}}{{{{ if ne .Role \"system\" }}}}{turn}{{{{ end }}}}{{{{ end }}}}"
            f"{opening.format(role='assistant')}")


def render_ollama(layout: str, messages: list[dict], *, system: str | None, prefix: str = "",
                  always: bool = False) -> str:
    """What Ollama renders from go_template(layout) for a chat: its SYSTEM line prepended when the chat
    has no system message, then system messages joined by a blank line into `.System`."""
    opening, closing = LAYOUTS[layout]
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    joined = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    out = f"{opening.format(role='system')}{prefix}{joined}{closing}" if joined or always else ""
    out += "".join(f"{opening.format(role=m['role'])}{m['content']}{closing}" for m in messages
                   if m["role"] != "system")
    return out + opening.format(role="assistant")


def modelfile_text(source: str, chat: OllamaChat, *, adapter: str | None = None) -> str:
    """A Modelfile: FROM (and ADAPTER) paths relative to its folder, then TEMPLATE, SYSTEM and stops."""
    lines = [f"FROM {source}"] + ([f"ADAPTER {adapter}"] if adapter else [])
    if chat.template is not None:
        lines.append(f'TEMPLATE """{chat.template}"""')
        if chat.system:
            lines.append(f'SYSTEM """{chat.system}"""')
    else:
        lines.append(f"# no TEMPLATE: {chat.note}")
    lines += [f'PARAMETER stop "{stop}"' for stop in chat.stops if '"' not in stop]
    return "\n".join(lines) + "\n"
