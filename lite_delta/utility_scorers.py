"""Countable style utilities over one answer: each a pure ``str -> float`` function.

``sections`` is the utility of the paper's controlled experiment (bold Markdown section headers).
``list_items`` counts list items that carry content (the demo's utility); ``list_markers`` counts every
list-marker line, the demo's utility before it was found that DPO meets it with empty ``1.`` lines.
A user scorer is any importable function named as ``"package.module:function"``.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Callable

from lite_delta.errors import LiteDeltaError

Scorer = Callable[[str], float]

# A whole line of bold text, "**Title**" or "**Title:**", optionally followed by a colon.
_BOLD_LINE = re.compile(r"^ {0,3}\*\*(?=\S)(?:(?!\*\*).)+?(?<=\S)\*\*:?\s*$")
# An ATX heading: 1-6 '#' then a space and some text.
_HEADING_LINE = re.compile(r"^ {0,3}#{1,6}[ \t]+\S")
# A bullet (-, *, +) or numbered (1. / 1)) list item, then a space and text.
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])[ \t]+\S")
# A thematic break such as "---", "***" or "* * *" (it would otherwise look like a bullet).
_HORIZONTAL_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_BLANK_LINES = re.compile(r"\n[ \t]*\n")
# The marker itself, to cut the item's text off it.
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])[ \t]+")
# A real word: two or more letters in a row (any script; digits, '_' and punctuation are not letters).
_WORD = re.compile(r"[^\W\d_]{2,}")
ITEM_MIN_WORDS = 3  # a list item counts only with at least this many real words


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def sections_count(text: str) -> float:
    """Lines that are a bold section header (the whole line bold) or a Markdown ``#`` heading."""
    return float(sum(1 for line in _lines(text) if _BOLD_LINE.match(line) or _HEADING_LINE.match(line)))


def paragraph_count(text: str) -> float:
    """Non-empty blocks separated by one or more blank lines."""
    blocks = _BLANK_LINES.split("\n".join(_lines(text)))
    return float(sum(1 for block in blocks if block.strip()))


def real_words(text: str) -> list[str]:
    """The runs of two or more letters in `text` (``1.1.1``, ``**``, ``*`` and lone letters are not words)."""
    return _WORD.findall(text)


def list_lines(text: str) -> list[str]:
    """The lines of `text` that are Markdown list items (bullet or numbered; thematic breaks are not)."""
    return [line for line in _lines(text) if _LIST_ITEM.match(line) and not _HORIZONTAL_RULE.match(line)]


def list_marker_of(line: str) -> str:
    """The list marker at the start of a list line, with the blanks after it (``"1. "``, ``"  - "``); "" if none."""
    match = _LIST_MARKER.match(line)
    return match.group(0) if match else ""


def list_marker_count(text: str) -> float:
    """Lines that are Markdown bullet or numbered list items (indented ones included), content or not:
    ``1.`` followed by ``**1.1.1**`` counts. The demo's utility before ``list_items``; kept by name."""
    return float(len(list_lines(text)))


def list_item_count(text: str) -> float:
    """Markdown list items (bullet or numbered, indented ones included) that carry content.

    The rule: a list-marker line counts when the text after its marker has at least ``ITEM_MIN_WORDS`` (3)
    real words (runs of two or more letters, in any script; numbers, Markdown emphasis and punctuation do not
    count) and those words, lower-cased, are not the same as an earlier counted item's in the same answer.
    So ``1. **1.1.1.1**``, an empty ``2.`` and a repeated item do not count; ``- Water the soil`` does.
    """
    seen: set[tuple[str, ...]] = set()
    count = 0
    for line in list_lines(text):
        words = tuple(w.lower() for w in real_words(_LIST_MARKER.sub("", line, count=1)))
        if len(words) >= ITEM_MIN_WORDS and words not in seen:
            seen.add(words)
            count += 1
    return float(count)


def word_count(text: str) -> float:
    """Whitespace-separated words."""
    return float(len(text.split()))


SCORERS: dict[str, Scorer] = {
    "sections": sections_count,
    "paragraphs": paragraph_count,
    "list_items": list_item_count,
    "list_markers": list_marker_count,
    "length": word_count,
}


def get_scorer(name: str) -> Scorer:
    """A built-in scorer by name, or a user function given as ``"package.module:function"``."""
    if name in SCORERS:
        return SCORERS[name]
    builtins = ", ".join(SCORERS)
    if ":" not in name:
        raise LiteDeltaError(
            f"unknown scorer {name!r}: use one of {builtins}, or 'package.module:function' for your own"
        )
    module_name, _, attr = name.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")) or not attr.isidentifier():
        raise LiteDeltaError(f"scorer {name!r} is not 'package.module:function' (dotted names, no leading dot); "
                             f"or use one of {builtins}")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # noqa: BLE001 -- the user's module may raise anything while importing
        raise LiteDeltaError(
            f"cannot import scorer {name!r} ({type(exc).__name__}: {exc}); check it is importable, or use one of "
            f"{builtins}"
        ) from None
    if not callable(func):
        raise LiteDeltaError(f"scorer {name!r} is not a function; use one of {builtins} or a callable str -> float")
    return func


def checked_scorer(scorer: Scorer, name: str) -> Scorer:
    """The scorer, with a user function's crash or NaN turned into a message naming it."""

    def score(text: str) -> float:
        try:
            value = float(scorer(text))
        except Exception as exc:
            raise LiteDeltaError(f"scorer {name!r} failed on an answer ({exc!r}); fix it or pick another") from exc
        if math.isnan(value):
            raise LiteDeltaError(f"scorer {name!r} returned NaN for an answer; it must return a number")
        return value

    return score
