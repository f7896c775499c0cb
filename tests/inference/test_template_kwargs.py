"""chat_template_kwargs (issue 25): Qwen3's real template with and without enable_thinking, through our renderer,
the batched llama.cpp generate path (and its completion keys) and the llama.cpp evaluation engine."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from lite_delta.completions import completion_key, read_completions
from lite_delta.config import GenerateConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.inference.engine import GGUFModel, SamplingParams
from lite_delta.inference.template import render_chat

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
EMPTY_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def qwen3_template() -> str:
    """Qwen3-0.6B's chat template as llama.cpp vendors it (models/templates), read from the test cache."""
    from tests.llama_cpp_reference import llama_cpp_source

    return (llama_cpp_source() / "models" / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")


def test_qwen3_template_renders_the_empty_think_block_only_when_thinking_is_off(qwen3_template):
    default = render_chat(qwen3_template, QUESTION)
    assert default == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    off = render_chat(qwen3_template, QUESTION, template_kwargs={"enable_thinking": False})
    assert off == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n" + EMPTY_THINK
    assert render_chat(qwen3_template, QUESTION, template_kwargs={"enable_thinking": True}) == default
    assert render_chat(qwen3_template, QUESTION, template_kwargs={}) == default


def test_qwen3_rendering_matches_transformers_apply_chat_template(qwen3_template, smollm2_student):
    """The student's path (transformers) and the teachers' (ours) render the kwargs alike."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_student)
    tokenizer.chat_template = qwen3_template
    for kwargs in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
        theirs = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True, **kwargs)
        assert render_chat(qwen3_template, QUESTION, template_kwargs=kwargs) == theirs


def test_kwargs_never_replace_the_variables_lite_delta_passes():
    template = "{{ messages | length }}|{{ add_generation_prompt }}|{{ flavour }}"
    text = render_chat(template, QUESTION, template_kwargs={"messages": [], "add_generation_prompt": False,
                                                             "flavour": "x"})
    assert text == "1|True|x"


def test_gguf_model_renders_with_its_kwargs(tiny_gguf, qwen3_template):
    model = GGUFModel(tiny_gguf, chat_template=qwen3_template, chat_template_kwargs={"enable_thinking": False})
    plain = GGUFModel(tiny_gguf, chat_template=qwen3_template)
    try:
        assert model.render(QUESTION).endswith(EMPTY_THINK)
        assert plain.render(QUESTION).endswith("<|im_start|>assistant\n")
        with pytest.raises(LiteDeltaError, match="failed to render"):  # a kwarg a template rejects: a clear error
            GGUFModel(tiny_gguf, chat_template="{{ raise_exception('bad ' ~ mode) }}",
                      chat_template_kwargs={"mode": "x"}).render(QUESTION)
    finally:
        model.close()
        plain.close()


def _generate(tmp_path, tiny_gguf, prompts, template, kwargs, out_name="gen"):
    from lite_delta.generate import generate

    cfg = GenerateConfig(model=str(tiny_gguf), prompts=dict(source=str(prompts)), out=tmp_path / out_name,
                         chat_template=template,
                         generation=dict(max_tokens=4, parallel=2, chat_template_kwargs=kwargs))
    return cfg, generate(cfg, progress=False)


def test_batched_generate_renders_with_kwargs_and_keys_them(tmp_path, tiny_gguf, qwen3_template, write_prompts):
    from lite_delta.models.refs import model_identity

    prompts = write_prompts(tmp_path / "p.jsonl", ["What is 2+2?", "Name a river."])
    cfg, out = _generate(tmp_path, tiny_gguf, prompts, qwen3_template, {})
    plain = read_completions(out)
    # Empty kwargs: the key is the one lite-delta made before the setting existed (existing runs stay valid).
    model = GGUFModel(tiny_gguf, chat_template=qwen3_template)
    g = cfg.generation
    sampling = asdict(SamplingParams(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                                     max_tokens=g.max_tokens, stop=tuple(g.stop)))
    old_keys = {completion_key(model=model_identity(tiny_gguf), template=qwen3_template,
                               prompt=model.render(r["messages"]), sampling=sampling, seed=r["seed"])
                for r in plain}
    model.close()
    assert {r["key"] for r in plain} == old_keys
    assert "chat_template_kwargs" not in (out / "generation.json").read_text()

    _, off_out = _generate(tmp_path, tiny_gguf, prompts, qwen3_template, {"enable_thinking": False}, "gen-off")
    off = read_completions(off_out)
    assert not {r["key"] for r in off} & {r["key"] for r in plain}, "kwargs are part of every key"
    assert '"enable_thinking": false' in (off_out / "generation.json").read_text()
    by_id = {r["prompt_id"]: r for r in plain}
    for r in off:  # the prompt grew by the empty think block's tokens: the engine got the rendered kwargs
        assert r["prompt_tokens"] > by_id[r["prompt_id"]]["prompt_tokens"]

    # Other kwargs into the same folder: refused (regenerate in a new folder), never mixed.
    with pytest.raises(LiteDeltaError, match="other settings"):
        _generate(tmp_path, tiny_gguf, prompts, qwen3_template, {"enable_thinking": True}, "gen-off")
    # A template that ignores a kwarg still keys it apart (the key records what was asked).
    _, smol = _generate(tmp_path, tiny_gguf, prompts, None, {"enable_thinking": False}, "gen-smol")
    _, smol_plain = _generate(tmp_path, tiny_gguf, prompts, None, {}, "gen-smol-plain")
    assert {r["key"] for r in read_completions(smol)}.isdisjoint(r["key"] for r in read_completions(smol_plain))


def test_llama_cpp_eval_engine_renders_and_identifies_kwargs(tiny_gguf, tmp_path):
    from lite_delta.evaluate.engines import open_engine
    from lite_delta.evaluate.tasks import Prompt

    common = dict(engine="llama.cpp", adapter=None, cache_dir=tmp_path, parallel=1, batch_size=1)
    template = "{{ messages[0].content }}{% if enable_thinking is defined and enable_thinking is false %}|nothink{% endif %}"
    path = tmp_path / "t.gguf"
    from lite_delta.models.random_gguf import write_random_gguf

    write_random_gguf(path, tokenizer_from=tiny_gguf, chat_template=template)
    off = open_engine(str(path), chat_template_kwargs={"enable_thinking": False}, **common)
    plain = open_engine(str(path), **common)
    try:
        prompt = Prompt(messages=tuple(QUESTION))
        assert off.render(prompt) == "What is 2+2?|nothink"
        assert plain.render(prompt) == "What is 2+2?"
        assert off.identity["template_kwargs"] == {"enable_thinking": False}
        assert "template_kwargs" not in plain.identity  # identities (and resumed evaluations) of old runs unchanged
    finally:
        off.close()
        plain.close()
