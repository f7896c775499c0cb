"""The Modelfiles give Ollama the prompt the GGUF's own chat template gives llama.cpp: the Modelfile's
TEMPLATE is rendered here as Ollama would (a small Go-template interpreter for the constructs it uses,
the SYSTEM line prepended to a chat without a system message) and compared, string for string, with
the GGUF's Jinja template rendered for the same conversations. Templates: the real SmolLM2 GGUF's,
and Qwen2.5's, Qwen3's and Llama 3.1/3.3's from llama.cpp's own collection."""

from __future__ import annotations

import re

import pytest

from lite_delta.inference.template import render_chat
from lite_delta.models.modelfile import modelfile_text, ollama_chat

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Say hello."}],
    [{"role": "user", "content": "Write a haiku.\nAbout rain."}, {"role": "assistant", "content": "Drops on the roof"},
     {"role": "user", "content": "Another, about snow — please ❄"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Bonjour"}, {"role": "user", "content": "How are you?"}],
]

# --- Ollama's side: the Modelfile parsed, its Go template rendered ---------------------------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _go_parse(template: str) -> list:
    """Go text/template for what our TEMPLATEs use: text, {{ .X }}, if/else if/else/end, range/end,
    eq/ne/not, and the {{- -}} whitespace trimming."""
    pieces, pos, trim_next = [], 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        text = text.lstrip() if trim_next else text
        pieces.append(("text", text.rstrip() if m.group(1) else text))
        pieces.append(("action", m.group(2)))
        trim_next, pos = bool(m.group(3)), m.end()
    tail = template[pos:]
    pieces.append(("text", tail.lstrip() if trim_next else tail))

    def block(i: int) -> tuple[list, int, str]:
        nodes = []
        while i < len(pieces):
            kind, value = pieces[i]
            if kind == "text":
                nodes.append(("text", value))
            elif value == "end" or value == "else" or value.startswith("else if "):
                return nodes, i, value
            elif value.startswith("if "):
                branches, cond = [], value[3:]
                while True:
                    body, i, stop = block(i + 1)
                    branches.append((cond, body))
                    if stop == "end":
                        break
                    cond = stop[8:] if stop.startswith("else if ") else "true"
                nodes.append(("if", branches))
            elif value.startswith("range "):
                body, i, stop = block(i + 1)
                assert stop == "end", stop
                nodes.append(("range", value[6:], body))
            else:
                nodes.append(("out", value))
            i += 1
        return nodes, i, ""

    nodes, _, stop = block(0)
    assert stop == "", f"unbalanced {stop}"
    return nodes


def _go_eval(expr: str, dot, root):
    tokens = re.findall(r'"[^"]*"|\S+', expr)

    def value(token: str):
        if token.startswith('"'):
            return token[1:-1]
        if token == "true":
            return True
        if token == ".":
            return dot
        if token.startswith("$."):
            return root[token[2:]]
        if token.startswith("."):
            return dot[token[1:]]
        raise AssertionError(f"unsupported Go template token {token}")

    name, args = tokens[0], [value(t) for t in tokens[1:]]
    if name == "eq":
        return args[0] == args[1]
    if name == "ne":
        return args[0] != args[1]
    if name == "not":
        return not args[0]
    assert not args, expr
    return value(name)


def _go_run(nodes: list, dot, root) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_go_eval(node[1], dot, root)))
        elif node[0] == "if":
            for cond, body in node[1]:
                if _go_eval(cond, dot, root):
                    out.append(_go_run(body, dot, root))
                    break
        elif node[0] == "range":
            out.extend(_go_run(node[2], item, root) for item in _go_eval(node[1], dot, root))
    return "".join(out)


def _parse_modelfile(text: str) -> dict:
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    return {"from": re.search(r"^FROM (.+)$", text, re.M).group(1),
            "adapter": (re.search(r"^ADAPTER (.+)$", text, re.M) or [None, None])[1],
            "template": template.group(1) if template else None, "system": system.group(1) if system else None,
            "stops": re.findall(r'^PARAMETER stop "(.*)"$', text, re.M)}


def ollama_prompt(modelfile: str, messages: list[dict]) -> str:
    """The prompt Ollama's chat endpoint builds: SYSTEM prepended when the chat has no system message,
    .System the system messages joined by a blank line, .Messages every message."""
    parsed = _parse_modelfile(modelfile)
    if parsed["system"] and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": parsed["system"]}, *messages]
    root = {"System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    return _go_run(_go_parse(parsed["template"]), root, root)


# --- the GGUF's side ---------------------------------------------------------------------------


def _gguf_prompt(template: str, messages: list[dict], bos: str, eos: str, add_bos: bool) -> str:
    """The GGUF's Jinja template as llama.cpp users get it; a BOS it writes is one Ollama's tokenizer adds."""
    text = render_chat(template, messages, bos_token=bos, eos_token=eos)
    return text[len(bos):] if add_bos and bos and text.startswith(bos) else text


def _metadata_gguf(path, template: str, bos: str, eos: str, add_bos: bool):
    """A GGUF holding only a chat template and the tokens it names (all ollama_chat reads)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list([bos or "<unused>", eos])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(add_bos)
    w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_smollm2_modelfile_renders_the_ggufs_prompt_with_its_system_line(smollm2_gguf):
    import gguf

    fields = gguf.GGUFReader(str(smollm2_gguf)).fields
    template = fields["tokenizer.chat_template"].contents()
    modelfile = modelfile_text("./base.gguf", ollama_chat(smollm2_gguf), adapter="./adapter.gguf")
    parsed = _parse_modelfile(modelfile)
    assert parsed["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert parsed["stops"] == ["<|im_end|>"]
    for messages in CONVERSATIONS:
        ours = ollama_prompt(modelfile, messages)
        assert ours == _gguf_prompt(template, messages, "<|im_start|>", "<|im_end|>", False)
    # without SYSTEM, Ollama's prompt would lack the system turn the GGUF's template always writes
    assert ollama_prompt(modelfile.replace("SYSTEM", "# SYSTEM"), CONVERSATIONS[0]) != ollama_prompt(
        modelfile, CONVERSATIONS[0])


# name, bos, eos, add_bos, default system line
TRANSLATED = [
    ("Qwen-Qwen2.5-7B-Instruct", "", "<|im_end|>", False,
     "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    ("Qwen-Qwen3-0.6B", "", "<|im_end|>", False, None),
    ("meta-llama-Llama-3.1-8B-Instruct", "<|begin_of_text|>", "<|eot_id|>", True, None),
    ("meta-llama-Llama-3.3-70B-Instruct", "<|begin_of_text|>", "<|eot_id|>", True, None),
]


@pytest.mark.parametrize("name,bos,eos,add_bos,system", TRANSLATED, ids=[t[0] for t in TRANSLATED])
def test_reference_templates_translate_exactly(tmp_path, name, bos, eos, add_bos, system):
    from tests.llama_cpp_reference import llama_cpp_source

    template = (llama_cpp_source() / "models" / "templates" / f"{name}.jinja").read_text(encoding="utf-8")
    chat = ollama_chat(_metadata_gguf(tmp_path / "m.gguf", template, bos, eos, add_bos))
    modelfile = modelfile_text("./m.gguf", chat)
    parsed = _parse_modelfile(modelfile)
    assert parsed["template"] is not None and parsed["system"] == system
    assert eos in parsed["stops"]
    for messages in CONVERSATIONS:
        assert ollama_prompt(modelfile, messages) == _gguf_prompt(template, messages, bos, eos, add_bos)


@pytest.mark.parametrize("name,bos,eos", [("meta-llama-Llama-3.2-3B-Instruct", "<|begin_of_text|>", "<|eot_id|>"),
                                          ("google-gemma-2-2b-it", "<bos>", "<end_of_turn>")])
def test_untranslatable_templates_get_no_template_but_say_why(tmp_path, name, bos, eos):
    """Llama 3.2 writes today's date into every prompt; Gemma has another turn layout: no wrong TEMPLATE."""
    from tests.llama_cpp_reference import llama_cpp_source

    template = (llama_cpp_source() / "models" / "templates" / f"{name}.jinja").read_text(encoding="utf-8")
    chat = ollama_chat(_metadata_gguf(tmp_path / "m.gguf", template, bos, eos, True))
    modelfile = modelfile_text("./m.gguf", chat)
    assert "TEMPLATE" not in modelfile.replace("# no TEMPLATE", "") and "SYSTEM" not in modelfile
    assert "# no TEMPLATE: " in modelfile and f'PARAMETER stop "{eos}"' in modelfile
