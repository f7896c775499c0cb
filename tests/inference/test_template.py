"""Chat templates: our sandboxed renderer against transformers' apply_chat_template, token for token."""

from __future__ import annotations

import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.inference.engine import GGUFModel
from lite_delta.inference.template import render_chat

CONVERSATIONS = [
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Café, naïve — 東京? 🙂"}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!\n\n- a\n- b"},
        {"role": "user", "content": "more  spaces\ttab"},
    ],
]


def test_llama_cpp_and_transformers_paths_give_the_same_tokens(smollm2_gguf):
    """The teacher (llama.cpp) and the student (transformers) must see one template, token for token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    model = GGUFModel(smollm2_gguf)
    for conversation in CONVERSATIONS:
        ours = model.tokenize_prompt(model.render(conversation))
        theirs = tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
        theirs = list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs)
        assert ours == theirs
    model.close()


def test_template_errors_and_sandbox_escapes_become_clear_errors():
    with pytest.raises(LiteDeltaError, match="failed to render: no system role"):
        render_chat("{{ raise_exception('no system role') }}", [], source="m.gguf")
    with pytest.raises(LiteDeltaError, match="failed to render"):
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", [], source="m.gguf")


def test_tojson_is_plain_json_as_in_transformers():
    out = render_chat("{{ messages[0]['content'] | tojson }}", [{"role": "user", "content": "<b>&é"}])
    assert out == '"<b>&é"'
