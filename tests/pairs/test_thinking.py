"""A teacher's leading reasoning block (<think>...</think>) as pairing sees it (completions.split_thinking)."""

from __future__ import annotations

import pytest

from lite_delta.completions import split_thinking


@pytest.mark.parametrize(
    "text, thinking, answer",
    [
        ("<think>\nadd them\n</think>\n\nIt is 4.", "add them", "It is 4."),
        ("  \n<think>\n\n</think>\n\nIt is 4.", "", "It is 4."),  # Qwen3 with thinking off echoing the empty block
        ("add them\n</think>\n\nIt is 4.", "add them", "It is 4."),  # the template opened <think> (R1 distills)
        ("<think>\nstill thinking when max_tokens ran out", "still thinking when max_tokens ran out", ""),
        ("It is 4.", None, "It is 4."),
        ("Use <think>x</think> tags like this.", None, "Use <think>x</think> tags like this."),
        ("The tag <think> opens, then </think> closes.", None, "The tag <think> opens, then </think> closes."),
        ("<think>a</think>B<think>c</think>D", "a", "B<think>c</think>D"),  # only the leading block
    ],
)
def test_split_thinking(text, thinking, answer):
    assert split_thinking(text) == (thinking, answer)
