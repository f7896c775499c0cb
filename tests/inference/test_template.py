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


HOSTILE_TEMPLATES = {  # each, rendered unbounded, raises a non-Jinja error, eats gigabytes or never returns
    "zero_division": ("{{ 1 // 0 }}", "ZeroDivisionError"),
    "huge_range": ("{% for i in range(10**9) %}x{% endfor %}", "number over 1,000,000"),
    "loop_of_loops": ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
                      "template steps"),
    "string_times": ("{{ 'x' * 10**10 }}", "value over 1,000,000"),
    "list_times": ("{{ ([0] * 99999) * 99999 }}", "value over 1,000,000"),
    "doubling_tilde": ("{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}", "value over 1,000,000"),
    "doubling_plus": ("{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}", "value over 1,000,000"),
    "width_filter": ("{{ 'x'|center(10**9) }}", "number over 1,000,000"),
    "width_method": ("{{ 'x'.ljust(10**9) }}", "number over 1,000,000"),
    "format_width": ("{{ '{:>999999999}'.format('x') }}", "width over 1,000,000"),
    "percent_width": ("{{ '%999999999s' % 'x' }}", "width over 1,000,000"),
    "percent_star_width": ("{{ '%*s' % (10**9, 'x') }}", "number over 1,000,000"),
    "format_map_width": ("{{ '{a:{w}}'.format_map({'a': 'x', 'w': 999999999}) }}", "number over 1,000,000"),
    "nested_format_width": ("{{ '{0:{1}}'.format('x', 999999999) }}", "number over 1,000,000"),
    "replace_growth": ("{% set ns = namespace(s='x' * 1000) %}{% for i in range(5) %}"
                       "{% set ns.s = ns.s.replace('', ns.s) %}{% endfor %}", "over 1,000,000 characters"),
    "power_tower": ("{{ 10 ** (10 ** 10) }}", "exponent over 4096"),
    "endless_output": ("{% for i in range(99999) %}{{ 'y' * 999999 }}{% endfor %}", "rendered prompt over"),
    "recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
}


@pytest.mark.parametrize("name", HOSTILE_TEMPLATES)
def test_hostile_templates_end_in_one_clear_error(name):
    import threading

    template, says = HOSTILE_TEMPLATES[name]
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(
        error=_error(lambda: render_chat(template, [{"role": "user", "content": "hi"}], source="evil.gguf"))),
        daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the template still runs after 30 s"
    assert isinstance(outcome["error"], LiteDeltaError), outcome["error"]
    assert "chat template of evil.gguf failed to render" in str(outcome["error"]) and says in str(outcome["error"])


def _error(fn):
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 -- the test looks at what came out
        return exc
    return None


def test_real_templates_render_within_the_bounds(smollm2_gguf):
    """The bounds leave a real template alone: SmolLM2's own, on a long conversation, as before."""
    model = GGUFModel(smollm2_gguf)
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 2000} for i in range(41)]
    text = model.render(long)
    assert text.count("<|im_start|>") == 43 and len(text) > 400_000  # 41 turns, the system turn, the prompt
    model.close()


def test_a_gguf_with_a_hostile_template_stops_generate_with_exit_2(tmp_path, smollm2_gguf, write_prompts):
    """Through the real command: a GGUF whose tokenizer.chat_template never ends its loops."""
    import subprocess
    import sys

    from lite_delta.models.random_gguf import write_random_gguf

    gguf = write_random_gguf(tmp_path / "evil.gguf", tokenizer_from=smollm2_gguf,
                             chat_template=HOSTILE_TEMPLATES["loop_of_loops"][0])
    prompts = write_prompts(tmp_path / "p.jsonl", ["hi"])
    run = subprocess.run([sys.executable, "-m", "lite_delta", "generate", "--model", str(gguf), "--prompts",
                          str(prompts), "--out", str(tmp_path / "out"), "--max-tokens", "4"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "template steps" in run.stderr and "Traceback" not in run.stderr


def test_control_text_is_found_in_any_message_content():
    from lite_delta.inference.template import control_text_in

    texts = ("<|im_start|>", "<|im_end|>")
    assert control_text_in([{"role": "user", "content": "plain"}], texts) is None
    assert control_text_in([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b<|im_end|>"}],
                           texts) == "<|im_end|>"
    assert control_text_in([{"role": "user", "content": "<|im_start"}], texts) is None  # not the whole marker
