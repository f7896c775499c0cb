"""Preference pairs for DPO, read from the pair stage, a file or a Hub dataset, and normalized to TRL's format.

Where they come from (``pairs_location``): an existing file, or a pair-stage folder (its pairs.jsonl), is read
as it is; anything else is a dataset that ``datasets.load_dataset`` reads, written ``ORG/NAME[:CONFIG][@SPLIT]``
(split ``train`` unless named): a Hub id, or a local folder laid out like a Hub dataset repo. A local path that
exists wins over a Hub id of the same name.

Every row comes back as ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` of ``{role, content}``
messages. Per row, three layouts are accepted:
1. TRL conversational: ``prompt``, ``chosen`` and ``rejected`` are message lists (the pair stage writes this).
2. Plain strings: ``prompt``, ``chosen``, ``rejected`` (and optionally ``system``) are strings.
3. Full conversations (Anthropic HH, UltraFeedback): ``chosen``/``rejected`` hold the prompt too, and
   ``prompt`` is absent or the first user turn as a string; the prompt is their shared leading messages.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from lite_delta.errors import LiteDeltaError
from lite_delta.files import parse_json
from lite_delta.inference.template import control_text_in

PAIRS_FILE = "pairs.jsonl"
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
EXPECTED_COLUMNS = ("`chosen` and `rejected` (with `prompt`, or full conversations that share their prompt; "
                    "`system` optional): TRL's conversational or standard preference format")
ROLES = ("system", "user", "assistant", "tool")
_MESSAGES = "a list of {role, content} messages"
# pairs dropped before training, counted in train.json; control_text: a message holds a special token's text
DEGENERATE = ("identical", "empty_chosen", "empty_rejected", "control_text")


@dataclass(frozen=True)
class HubPairs:
    """A preference dataset that ``datasets.load_dataset(dataset, config, split=split)`` reads."""

    dataset: str  # a Hub id ORG/NAME, or a local folder in a Hub dataset repo's layout
    config: str | None = None
    split: str = "train"

    def __str__(self) -> str:
        return f"{self.dataset} ({f'config {self.config}, ' if self.config else ''}split {self.split})"


def parse_hub_pairs(ref: str) -> HubPairs:
    """``ORG/NAME[:CONFIG][@SPLIT]`` (or ``FOLDER[:CONFIG][@SPLIT]``): ':' and '@' are read after the last '/',
    '@' first, so a sliced split (``train[:1000]``) keeps its ':'."""
    head, slash, tail = str(ref).rpartition("/")
    tail, at, split = tail.partition("@")
    name, colon, config = tail.partition(":")
    if not name or (colon and not config) or (at and not split):
        raise LiteDeltaError(f"pairs {ref!r}: write a Hub dataset as ORG/NAME, ORG/NAME:CONFIG, ORG/NAME@SPLIT or "
                             "ORG/NAME:CONFIG@SPLIT (split train unless named)")
    return HubPairs(head + slash + name, config or None, split or "train")


def pairs_location(ref: str | Path) -> Path | HubPairs:
    """What ``ref`` names: a local pairs file (the file itself, or a pair-stage folder's pairs.jsonl), or a
    dataset for ``datasets`` (a Hub id, or a folder with no pairs.jsonl, read as a Hub dataset repo). A local
    file or pair-stage folder that exists wins over a Hub id of the same name; a missing local-looking path
    stays a local file (and is reported missing)."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir() and (path / PAIRS_FILE).is_file():
        return path / PAIRS_FILE
    text = str(ref)
    if path.is_dir() or (HUB_ID.match(text.partition("@")[0].partition(":")[0])
                         and Path(text).suffix.lower() not in FILE_SUFFIXES):
        return parse_hub_pairs(text)
    if ":" in text or "@" in text:  # a local folder with a config or split named
        hub = parse_hub_pairs(text)
        if Path(hub.dataset).is_dir():
            return hub
    return path


def pairs_source(ref: str | Path) -> Path | str:
    """What ``ref`` names, for messages: the pairs file, or the dataset with its config and split."""
    where = pairs_location(ref)
    return where if isinstance(where, Path) else str(where)


def load_pairs(ref: str | Path) -> list[dict]:
    """Rows of a pair-stage dir (its pairs.jsonl), a .jsonl / .json / .parquet / .csv file, or a Hub dataset
    ``ORG/NAME[:CONFIG][@SPLIT]``, checked and normalized."""
    source = pairs_location(ref)
    if isinstance(source, HubPairs):
        label, numbered = str(source), _read_dataset(_hub_table(source), str(source))
    else:
        label, numbered = source, _read_file(source)
    if not numbered:
        raise LiteDeltaError(f"{label} holds no pairs: rerun `lite-delta pair` or pass a file with rows in it")
    return [_normalize(row, f"{label} row {number}") for number, row in numbered]


def pairs_provenance(ref: str | Path) -> dict:
    """What identifies the pairs read, for train.json and the manifest: a local file's path and sha256, or a Hub
    dataset's id, config, split, datasets' fingerprint and the commit it was read at."""
    source = pairs_location(ref)
    if isinstance(source, HubPairs):
        from lite_delta.hub_data import provenance

        return provenance(source.dataset, source.config, source.split, _hub_table(source))
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(source), "sha256": digest.hexdigest()}


def degenerate(row: dict) -> str | None:
    """Why DPO cannot learn from a normalized pair (the first that applies), or None: an empty
    chosen or rejected answer, or the same answer on both sides (contents compared stripped)."""

    def answer(messages: list[dict]) -> list[tuple[str, str]]:
        return [(m["role"], m["content"].strip()) for m in messages]

    chosen, rejected = answer(row["chosen"]), answer(row["rejected"])
    if not any(text for _, text in chosen):
        return "empty_chosen"
    if not any(text for _, text in rejected):
        return "empty_rejected"
    return "identical" if chosen == rejected else None


def drop_degenerate(rows: list[dict], source: str | Path) -> tuple[list[dict], dict]:
    """The rows worth training on and the count of each degenerate kind dropped; an error naming
    ``source`` when no row is left, since there is then nothing to learn."""
    counts = dict.fromkeys(DEGENERATE, 0)
    kept = []
    for row in rows:
        kind = degenerate(row)
        if kind is None:
            kept.append(row)
        else:
            counts[kind] += 1
    if not kept:
        raise LiteDeltaError(
            f"{source}: all {len(rows)} pairs are degenerate ({describe_degenerate(counts)}), so there is "
            "nothing to learn: each pair needs a non-empty chosen answer that differs from a non-empty rejected one"
        )
    return kept, counts


def special_texts(tokenizer) -> tuple[str, ...]:
    """The student tokenizer's special-token texts (<|im_start|>, <|im_end|>, <|endoftext|>, ...)."""
    texts = set(tokenizer.all_special_tokens)
    texts |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    return tuple(sorted((t for t in texts if t), key=len, reverse=True))


def drop_control_text(rows: list[dict], texts: tuple[str, ...], counts: dict, source: str | Path) -> list[dict]:
    """The rows none of whose messages holds a special token's text (which the student's tokenizer would read
    as the token itself: a forged turn in the training data); counts["control_text"] is set to the rest."""
    kept = [r for r in rows if not any(control_text_in(r[side], texts) for side in ("prompt", "chosen", "rejected"))]
    counts["control_text"] = len(rows) - len(kept)
    if not kept:
        raise LiteDeltaError(f"{source}: every pair holds the text of a special token of the student (e.g. "
                             f"{texts[0] if texts else '<|im_end|>'}) in a message, which would forge turns; "
                             "nothing is left to train on")
    return kept


def describe_degenerate(counts: dict) -> str:
    return ", ".join(f"{kind.replace('_', ' ')} {counts.get(kind, 0)}" for kind in DEGENERATE)


def strip_contrast(rows: list[dict]) -> tuple[list[dict], int]:
    """The rows as DPO trains on them (without the pair stage's ``contrast`` mark) and how many were contrast
    pairs: a chosen answer against a degenerate copy of itself (pairs/contrast.py)."""
    return [{k: v for k, v in row.items() if k != "contrast"} for row in rows], sum("contrast" in row for row in rows)


def sampled_pairs(rows: list[dict]) -> list[dict]:
    """The rows that are not contrast pairs: the SFT contrast learns from these chosen answers (a contrast pair's
    chosen answer is another pair's, so with them it would see those answers twice)."""
    return [row for row in rows if "contrast" not in row]


def pairs_stats(rows: list[dict], source: str | Path | None = None) -> dict:
    """Counts worth printing before training: DPO on weak pairs easily learns 'longer is better'; with
    ``source`` (the pairs reference), also where they came from (``pairs_provenance``)."""

    def chars(messages: list[dict]) -> int:
        return sum(len(m["content"]) for m in messages)

    chosen = [chars(row["chosen"]) for row in rows]
    rejected = [chars(row["rejected"]) for row in rows]
    return {
        "rows": len(rows),
        "chosen_chars_mean": sum(chosen) / len(rows) if rows else None,
        "rejected_chars_mean": sum(rejected) / len(rows) if rows else None,
        "chosen_longer": sum(c > r for c, r in zip(chosen, rejected)),
        **({"source": pairs_provenance(source)} if source is not None else {}),
    }


# --- reading ---------------------------------------------------------------------------------------


def _read_file(source: Path) -> list[tuple[int, object]]:
    if not source.is_file():
        raise LiteDeltaError(f"{source} does not exist: run `lite-delta pair` first, pass a pairs.jsonl / .json / "
                             ".parquet / .csv file, or a Hub dataset ORG/NAME[:CONFIG][@SPLIT]")
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    reader = readers.get(source.suffix.lower())
    if reader is None:
        raise LiteDeltaError(f"{source} is not a pair-stage dir or a .jsonl, .json, .parquet or .csv file; "
                             "pass one of those")
    return reader(source)


@functools.lru_cache(maxsize=2)
def _hub_table(source: HubPairs):
    """The dataset, loaded once per process: the provenance train.json records is that of the rows trained on."""
    from lite_delta.hub_data import load_split

    if Path(source.dataset).is_dir() and not any(Path(source.dataset).iterdir()):
        raise LiteDeltaError(f"{Path(source.dataset) / PAIRS_FILE} does not exist: run `lite-delta pair` first, or "
                             "pass a pairs file or a dataset folder in the Hub layout")
    return load_split(source.dataset, source.config, source.split, "pairs dataset")


def _read_dataset(table, label: str) -> list[tuple[int, object]]:
    """A datasets table's rows, once its columns are those of a preference dataset."""
    if "chosen" not in table.column_names or "rejected" not in table.column_names:
        raise LiteDeltaError(f"{label} has columns {', '.join(table.column_names) or 'none'}; "
                             f"a preference dataset needs {EXPECTED_COLUMNS}")
    return list(enumerate(table.to_list(), 1))


def _read_jsonl(source: Path) -> list[tuple[int, object]]:
    """(line number, value) per non-blank line; the line number is the row number in errors."""
    numbered = []
    with open(source, "rb") as f:
        for number, raw in enumerate(f, 1):
            if raw.strip():
                numbered.append((number, parse_json(raw, f"{source} row {number}")))
    return numbered


def _read_json(source: Path) -> list[tuple[int, object]]:
    value = parse_json(source.read_bytes(), str(source))
    if not isinstance(value, list):
        raise LiteDeltaError(f"{source} must hold a JSON list of pair objects; wrap the rows in [ ... ]")
    return list(enumerate(value, 1))


def _read_parquet(source: Path) -> list[tuple[int, object]]:
    import datasets  # heavy import, only needed here

    try:
        dataset = datasets.load_dataset("parquet", data_files=str(source), split="train")
    except Exception as exc:  # pyarrow and datasets raise many types for a bad file
        raise LiteDeltaError(f"{source} could not be read as parquet ({exc}); check it or export it as .jsonl") from exc
    return _read_dataset(dataset, str(source)) if dataset.num_rows else []


def _read_csv(source: Path) -> list[tuple[int, object]]:
    """Plain-string pairs (`prompt`, `chosen`, `rejected`, optional `system`) under a header row; cells stay
    text, an empty `system` adds nothing."""
    try:
        with open(source, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if any(row.values())]
            columns = reader.fieldnames or []
    except UnicodeDecodeError:
        raise LiteDeltaError(f"{source} is not UTF-8 text: save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise LiteDeltaError(f"{source} is not valid CSV: {exc}") from None
    if rows and ("chosen" not in columns or "rejected" not in columns):
        raise LiteDeltaError(f"{source} has columns {', '.join(columns) or 'none'}; "
                             f"a preference dataset needs {EXPECTED_COLUMNS}")
    return list(enumerate(rows, 1))


# --- normalizing -----------------------------------------------------------------------------------


def _normalize(row: object, where: str) -> dict:
    """One row in any accepted layout as {prompt, chosen, rejected} message lists, or an error naming the field."""
    if not isinstance(row, dict):
        raise LiteDeltaError(f"{where} must be an object with `chosen` and `rejected`; got {type(row).__name__}")
    for field in ("chosen", "rejected"):
        if row.get(field) is None:
            raise LiteDeltaError(f"{where}: field `{field}` is missing; every pair needs `chosen` and `rejected`")
    prompt = row.get("prompt")
    if isinstance(row["chosen"], str) != isinstance(row["rejected"], str):
        raise LiteDeltaError(f"{where}: fields `chosen` and `rejected` must both be strings or both be {_MESSAGES}")
    if isinstance(row["chosen"], str):
        if prompt is None:
            raise LiteDeltaError(f"{where}: field `prompt` is missing; plain-string pairs need a `prompt` string")
        if not isinstance(prompt, str):
            raise LiteDeltaError(f"{where}: field `prompt` must be a string when `chosen` and `rejected` are strings")
        prompt = [{"role": "user", "content": prompt}]
        chosen = [{"role": "assistant", "content": row["chosen"]}]
        rejected = [{"role": "assistant", "content": row["rejected"]}]
    else:
        chosen, rejected = _answer(row, "chosen", where), _answer(row, "rejected", where)
        if isinstance(prompt, list):
            prompt = _messages(prompt, "prompt", where)
        elif prompt is not None and not isinstance(prompt, str):
            raise LiteDeltaError(f"{where}: field `prompt` must be a string or {_MESSAGES}")
        elif prompt is not None and not any(m["role"] == "user" for m in chosen + rejected):
            prompt = [{"role": "user", "content": prompt}]  # string prompt, answers as message lists
        else:
            prompt, chosen, rejected = _split(chosen, rejected, prompt, where)
    prompt = _with_system(prompt, row.get("system"), where)
    if not any(m["role"] == "user" for m in prompt):
        raise LiteDeltaError(f"{where}: field `prompt` has no user message; add the user's question to it")
    contrast = row.get("contrast")  # a contrast pair of the pair stage (pairs/contrast.py): its form
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            **({"contrast": contrast} if isinstance(contrast, str) and contrast else {})}


def _messages(value: object, field: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise LiteDeltaError(f"{where}: field `{field}` must be a string or {_MESSAGES}")
    messages = []
    for number, message in enumerate(value, 1):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise LiteDeltaError(
                f"{where}: field `{field}` message {number} has role {role!r}; use one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise LiteDeltaError(
                f"{where}: field `{field}` message {number} needs a string `content`, not {content!r:.40}"
            )
        messages.append({"role": role, "content": content})
    return messages


def _answer(row: dict, field: str, where: str) -> list[dict]:
    """A chosen/rejected message list: non-empty and ending with the assistant's answer."""
    messages = _messages(row[field], field, where)
    if not messages:
        raise LiteDeltaError(f"{where}: field `{field}` is an empty list; it needs at least one assistant message")
    if messages[-1]["role"] != "assistant":
        raise LiteDeltaError(
            f"{where}: field `{field}` must end with an assistant message, not {messages[-1]['role']!r}; "
            "drop the trailing turns or the row"
        )
    return messages


def _split(chosen: list[dict], rejected: list[dict], prompt_text: str | None, where: str) -> tuple:
    """Full conversations: the shared messages before the final assistant turn(s) are the prompt."""

    def answer_start(messages: list[dict]) -> int:  # where the trailing run of assistant messages begins
        start = len(messages)
        while start > 0 and messages[start - 1]["role"] == "assistant":
            start -= 1
        return start

    from trl.data_utils import extract_prompt  # TRL's implicit-prompt rule: the longest shared leading messages

    shared = len(extract_prompt({"chosen": chosen, "rejected": rejected})["prompt"])
    cut = min(shared, answer_start(chosen), answer_start(rejected))
    if cut == 0:
        raise LiteDeltaError(
            f"{where}: fields `chosen` and `rejected` share no leading messages, so the prompt cannot be found; "
            "add a `prompt` field"
        )
    prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
    if any(m["role"] == "user" for m in chosen + rejected):
        raise LiteDeltaError(
            f"{where}: fields `chosen` and `rejected` differ before their last user turn; "
            "only the final assistant answer may differ, so split the row or add a `prompt` field"
        )
    first_user = next((m["content"] for m in prompt if m["role"] == "user"), None)
    if prompt_text is not None and first_user is not None and prompt_text.strip() != first_user.strip():
        raise LiteDeltaError(
            f"{where}: field `prompt` does not match the first user turn of `chosen`; fix it or drop `prompt`"
        )
    return prompt, chosen, rejected


def _with_system(prompt: list[dict], system: object, where: str) -> list[dict]:
    """Prepend a `system` column's text, unless the prompt already starts with that same system message."""
    if system is None or system == "":
        return prompt
    if not isinstance(system, str):
        raise LiteDeltaError(f"{where}: field `system` must be a string")
    if prompt and prompt[0]["role"] == "system":
        if prompt[0]["content"] != system:
            raise LiteDeltaError(f"{where}: field `system` differs from the prompt's system message; keep only one")
        return prompt
    return [{"role": "system", "content": system}, *prompt]
