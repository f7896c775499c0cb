"""Contrast pairs: a chosen answer against a degenerate copy of itself, in the forms a list-trained student breaks into.

DPO on list-vs-prose pairs raises list markers everywhere, and a small student breaks in greedy decoding before it
writes more list items than the chosen answers (README, the demo's "What we tried"): ``1. **1.1.1.1**``, one item
repeated, bare headings. No sampled rejected answer shows it those forms. A contrast pair does: its chosen side is a
real pair's chosen answer, its rejected side that answer turned into one of them, so the only delta is the break.

- ``loop``: the answer up to its first list marker (and bold opener), then ``1.1.1.1…`` lines;
- ``repeat``: the first item written again under the next numbers;
- ``headings``: every item cut to its bold title or first two words.

The copy keeps the chosen answer's text before the first list line, so the pair differs only from there on, and
it is kept only when it has fewer list items with content than the original (the ``list_items`` rule). Pure
functions of the text: which form a pair gets is fixed by a hash of the answer.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Literal, get_args

from lite_delta.utility_scorers import list_item_count, list_lines, list_marker_of

ContrastKind = Literal["loop", "repeat", "headings"]  # the forms; the config fields use this type
KINDS: tuple[str, ...] = get_args(ContrastKind)
MIN_ITEMS = 2  # a chosen answer with fewer list items with content gets no contrast pair
_NUMBER = re.compile(r"^(\s*)\d{1,9}([.)])[ \t]+")
_BOLD_TITLE = re.compile(r"^\*\*[^*\n]+\*\*:?")


def degenerate_copy(text: str, kind: str) -> str | None:
    """`text` turned into the `kind` of break (``KINDS``), or None where it has no list line to break."""
    if kind not in KINDS:
        raise ValueError(f"contrast kind {kind!r}: one of {', '.join(KINDS)}")
    lines = text.replace("\r\n", "\n").split("\n")
    listed = set(list_lines(text))
    at = [i for i, line in enumerate(lines) if line in listed]
    if not at:
        return None
    head = "".join(line + "\n" for line in lines[: at[0]])
    first = lines[at[0]]
    marker = list_marker_of(first)
    if kind == "loop":
        bold = "**" if first[len(marker):].startswith("**") else ""
        out = f"{head}{marker}{bold}1.1.1.1.1.1.1.1{bold}"
        while len(out) < len(text):
            out += "\n\n1.1.1.1.1.1"
        return out
    if kind == "repeat":
        body, number = first[len(marker):], _NUMBER.match(marker)
        copies = [first]
        while len(copies) < 4 or len(head) + sum(len(c) + 2 for c in copies) < len(text):
            copies.append(f"{number.group(1)}{len(copies) + 1}{number.group(2)} {body}" if number else first)
        return head + "\n\n".join(copies)
    titles = []
    for i in at:
        item_marker = list_marker_of(lines[i])
        body = lines[i][len(item_marker):]
        title = _BOLD_TITLE.match(body)
        titles.append(item_marker + (title.group(0) if title else " ".join(body.split()[:2])))
    return head + "\n".join(titles)


def contrast_row(row: dict, kinds: list[str] | tuple[str, ...], scorer: Callable[[str], float]) -> dict | None:
    """A contrast pair for one pair row (TRL conversational, as ``pairing`` writes it): its chosen answer against a
    degenerate copy (scored by `scorer`), the first of `kinds` (starting at the answer's hash) whose copy has fewer list items with
    content; None when the chosen answer has fewer than ``MIN_ITEMS`` or no kind lowers its count."""
    chosen = row["chosen"][-1]["content"]
    items = list_item_count(chosen)
    if items < MIN_ITEMS or not kinds:
        return None
    start = int.from_bytes(hashlib.sha256(chosen.encode("utf-8")).digest()[:8], "big")
    for k in range(len(kinds)):
        kind = kinds[(start + k) % len(kinds)]
        copy = degenerate_copy(chosen, kind)
        if copy is not None and list_item_count(copy) < items:
            return {**row, "rejected": [{"role": "assistant", "content": copy}], "rejected_model": f"contrast:{kind}",
                    "rejected_score": scorer(copy), "contrast": kind}
    return None


def with_contrast(rows: list[dict], kinds: list[str] | tuple[str, ...],
                  scorer: Callable[[str], float]) -> tuple[list[dict], dict]:
    """`rows` with one contrast pair after each prompt's first pair (its best chosen answer) where one can be made,
    and the counts per kind."""
    out, seen, counts = [], set(), dict.fromkeys(kinds, 0)
    for row in rows:
        out.append(row)
        if row["prompt_id"] in seen:
            continue
        seen.add(row["prompt_id"])
        extra = contrast_row(row, kinds, scorer)
        if extra is not None:
            out.append(extra)
            counts[extra["contrast"]] += 1
    return out, counts
