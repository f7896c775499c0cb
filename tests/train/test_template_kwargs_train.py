"""train.chat_template_kwargs: the student's template renders with them in our checks and in TRL's DPO and SFT
tokenization alike (a per-row chat_template_kwargs column), with Qwen3's real template."""

from __future__ import annotations

import pytest

from lite_delta.train.sequences import (
    check_sequences,
    end_token_ids,
    fit_prompts,
    render_ids,
    rendered_pair,
    with_template_kwargs,
)
from lite_delta.train.sft import sft_rows

ROWS = [{"prompt": [{"role": "user", "content": "What is 2+2?"}],
         "chosen": [{"role": "assistant", "content": "It is 4."}],
         "rejected": [{"role": "assistant", "content": "5"}]}]
OFF = {"enable_thinking": False}
THINK_OFF_PROMPT = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_student):
    from transformers import AutoTokenizer

    from tests.llama_cpp_reference import llama_cpp_source

    tok = AutoTokenizer.from_pretrained(tiny_student)
    tok.chat_template = (llama_cpp_source() / "models" / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
    return tok


def test_rows_carry_the_kwargs_only_when_set():
    assert with_template_kwargs(ROWS, {}) is ROWS
    rows = with_template_kwargs(ROWS, OFF)
    assert rows[0]["chat_template_kwargs"] == OFF and "chat_template_kwargs" not in ROWS[0]
    assert sft_rows(rows)[0]["chat_template_kwargs"] == OFF
    assert "chat_template_kwargs" not in sft_rows(ROWS)[0]


def test_our_checks_render_with_the_rows_kwargs(tokenizer, tiny_student):
    rows = with_template_kwargs(ROWS, OFF)
    prompt = tokenizer.decode(render_ids(tokenizer, ROWS[0]["prompt"], generation_prompt=True, template_kwargs=OFF))
    assert prompt.endswith(THINK_OFF_PROMPT)
    plain = tokenizer.decode(render_ids(tokenizer, ROWS[0]["prompt"], generation_prompt=True))
    assert plain.endswith("<|im_start|>assistant\n")
    check_sequences(tokenizer, rows, end_token_ids(tokenizer, tiny_student))
    kept, truncated, dropped = fit_prompts(rows, tokenizer, budget=12)  # the empty think block counts
    plain_kept, _, _ = fit_prompts(ROWS, tokenizer, budget=12)
    assert (len(kept), truncated, dropped) == (0, 0, 1) and len(plain_kept) == 1
    assert "It is 4." in rendered_pair(tokenizer, rows[0])


def test_trl_dpo_tokenizes_each_row_with_its_kwargs(tokenizer, tiny_student, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_student)
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1)
    for rows, kwargs in ((with_template_kwargs(ROWS, OFF), OFF), (ROWS, {})):
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer)
        row = trainer.train_dataset[0]
        whole = tokenizer.apply_chat_template(ROWS[0]["prompt"] + ROWS[0]["chosen"], tokenize=False, **kwargs)
        assert tokenizer.decode(row["prompt_ids"] + row["chosen_ids"]) == whole
        # With the kwarg the empty think block is prompt (Qwen3 when thinking is off); without it Qwen3's template
        # writes it into the answer the student learns. (SmolLM2's tokenizer splits the "\n\n" after </think>
        # differently before text, so TRL moves those two newlines to the answer; Qwen's own pre-tokenizer does not.)
        prompt = tokenizer.decode(row["prompt_ids"])
        assert ("<think>\n\n</think>" in prompt) == bool(kwargs)
        assert ("<think>" in tokenizer.decode(row["chosen_ids"])) != bool(kwargs)
