"""What the student trains on, with SmolLM2's real tokenizer: one template, BOS/EOS, prompt budgets."""

from __future__ import annotations

import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.inference.engine import GGUFModel
from lite_delta.train.sequences import (
    check_sequences,
    end_token_ids,
    fit_prompt,
    fit_prompts,
    render_ids,
    rendered_pair,
    template_for,
)

PAIRS = [
    {"prompt": [{"role": "user", "content": "Name three rivers."}],
     "chosen": [{"role": "assistant", "content": "- Nile\n- Amazon\n- Danube"}],
     "rejected": [{"role": "assistant", "content": "The Nile."}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Café? 東京 🙂"}],
     "chosen": [{"role": "assistant", "content": "Oui.\n\n"}],
     "rejected": [{"role": "assistant", "content": ""}]},
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_student):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_student)
    template_for(tok, None, smollm2_student)
    return tok


def test_student_and_teacher_render_the_same_tokens(tokenizer, smollm2_gguf):
    """The converted student's tokenizer and llama.cpp's GGUF path: one template, token for token."""
    model = GGUFModel(smollm2_gguf)
    try:
        for row in PAIRS:
            assert render_ids(tokenizer, row["prompt"], generation_prompt=True) == model.tokenize_prompt(
                model.render(row["prompt"]))
    finally:
        model.close()


def test_training_sequences_have_one_bos_and_end_with_eos(tokenizer, smollm2_student):
    """Rendered exactly as TRL renders them: no doubled BOS, and <|im_end|> closes every answer."""
    end_ids = end_token_ids(tokenizer, smollm2_student)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in end_ids
    check_sequences(tokenizer, PAIRS, end_ids)
    for row in PAIRS:
        for side in ("chosen", "rejected"):
            ids = render_ids(tokenizer, row["prompt"] + row[side])
            prompt = render_ids(tokenizer, row["prompt"], generation_prompt=True)
            assert ids[:len(prompt)] == prompt
            assert ids[len(prompt):].count(tokenizer.eos_token_id) == 1, "one EOS per answer, not two"
            content = [i for i in ids if tokenizer.decode([i]).strip()]
            assert content[-1] == tokenizer.eos_token_id
            if tokenizer.bos_token_id is not None:
                assert ids[:2].count(tokenizer.bos_token_id) <= 1


def test_a_template_without_eos_is_refused(smollm2_student):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_student)
    no_eos = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}" \
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    template_for(tok, no_eos, smollm2_student)
    with pytest.raises(LiteDeltaError, match="pair 1 \\(chosen\\).*never learn to stop.*chat_template"):
        check_sequences(tok, PAIRS, end_token_ids(tok, smollm2_student))


def test_a_doubled_bos_is_refused(smollm2_student):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_student)
    tok.bos_token = "<|endoftext|>"
    doubled = "{{ bos_token }}{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}" \
              "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    template_for(tok, doubled, smollm2_student)
    with pytest.raises(LiteDeltaError, match="BOS"):
        check_sequences(tok, PAIRS, end_token_ids(tok, smollm2_student))


def test_student_without_template_is_refused_naming_the_field(smollm2_student):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_student)
    tok.chat_template = None
    with pytest.raises(LiteDeltaError, match="set `chat_template` in the train config"):
        template_for(tok, None, "my-base-model")


def test_long_prompts_are_cut_from_the_start_of_the_last_message(tokenizer):
    question = "Which river is the longest?"
    long = [{"role": "user", "content": "lorem ipsum dolor " * 200 + question}]
    budget = 64
    cut = fit_prompt(tokenizer, long, budget)
    assert len(render_ids(tokenizer, cut, generation_prompt=True)) <= budget
    assert cut[-1]["content"].endswith(question)
    assert len(render_ids(tokenizer, cut, generation_prompt=True)) >= budget - 3, "cut no more than needed"
    short = PAIRS[0]["prompt"]
    assert fit_prompt(tokenizer, short, budget) is short


def test_earlier_turns_go_first_and_the_system_message_stays(tokenizer):
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "old question " * 30},
        {"role": "assistant", "content": "old answer " * 30},
        {"role": "user", "content": "Now: name a river."},
    ]
    cut = fit_prompt(tokenizer, chat, 60)
    assert [m["role"] for m in cut] == ["system", "user"]
    assert cut[-1]["content"] == "Now: name a river."


def test_prompts_that_cannot_fit_are_dropped_and_counted(tokenizer):
    rows = [{**PAIRS[0], "prompt": [{"role": "system", "content": "rules " * 100}, {"role": "user", "content": "hi"}]},
            PAIRS[0], {**PAIRS[0], "prompt": [{"role": "user", "content": "word " * 300}]}]
    kept, truncated, dropped = fit_prompts(rows, tokenizer, 48)
    assert (len(kept), truncated, dropped) == (2, 1, 1)


def test_rendered_pair_shows_special_tokens(tokenizer):
    text = rendered_pair(tokenizer, PAIRS[0])
    assert "<|im_start|>assistant\n- Nile\n- Amazon\n- Danube<|im_end|>" in text
    assert "prompt + rejected" in text
