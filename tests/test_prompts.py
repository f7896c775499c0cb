"""Prompt loading: formats, conversation trimming, dedupe, sampling and the errors users see."""

from __future__ import annotations

import hashlib
import json

import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.prompts import Prompt, load_prompts, prompt_id, prompt_share


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


pytestmark = pytest.mark.usefixtures("datasets_cache")  # tests/conftest.py


# --- formats ------------------------------------------------------------------------------------


def test_jsonl_prompt_strings(tmp_path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Why is the sky blue?"}, {"prompt": "Name three fruits."}])
    prompts, stats = load_prompts(source, sample="first")
    assert [p.messages for p in prompts] == [
        (user("Why is the sky blue?"),),
        (user("Name three fruits."),),
    ]
    assert [p.index for p in prompts] == [0, 1]
    assert stats == {"rows": 2, "empty": 0, "duplicates": 0, "selected": 2}


def test_prompt_id_is_hash_of_canonical_json(tmp_path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Café?"}])
    (prompt,), _ = load_prompts(source)
    canonical = '[{"content":"Café?","role":"user"}]'
    assert prompt.prompt_id == hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    assert prompt.prompt_id == prompt_id([user("Café?")])


def test_prompt_is_hashable_and_frozen(tmp_path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    prompts, _ = load_prompts(source)
    assert len(set(prompts)) == 2
    with pytest.raises(AttributeError):
        prompts[0].index = 5  # type: ignore[misc]
    assert isinstance(prompts[0], Prompt)


def test_jsonl_messages_and_multi_turn_trim(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    rows = [
        # ends with the assistant: the prompt is everything before that reply
        {"messages": [system, user("Hi"), assistant("Hello!"), user("Tell me a joke."), assistant("No.")]},
        # ends with the user: kept as is
        {"messages": [user("First"), assistant("Ok"), user("Second")]},
    ]
    prompts, _ = load_prompts(write_jsonl(tmp_path / "m.jsonl", rows), sample="first")
    assert prompts[0].messages == (system, user("Hi"), assistant("Hello!"), user("Tell me a joke."))
    assert prompts[1].messages == (user("First"), assistant("Ok"), user("Second"))


def test_chosen_column_like_tulu_preference_mixture(tmp_path):
    rows = [{"id": "x", "chosen": [user("Q?"), assistant("good")], "rejected": [user("Q?"), assistant("bad")]}]
    prompts, _ = load_prompts(write_jsonl(tmp_path / "pref.jsonl", rows))
    assert prompts[0].messages == (user("Q?"),)


def test_sharegpt_conversations(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hey."}]}]
    prompts, _ = load_prompts(write_jsonl(tmp_path / "s.jsonl", rows))
    assert prompts[0].messages == (user("Hi?"),)


def test_column_autodetect_order_and_explicit_column(tmp_path):
    source = write_jsonl(tmp_path / "c.jsonl", [{"question": "q1", "prompt": "p1", "note": "n1"}])
    assert load_prompts(source)[0][0].messages == (user("p1"),)
    assert load_prompts(source, column="note")[0][0].messages == (user("n1"),)


def test_json_list_and_data_object(tmp_path):
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([{"instruction": "a"}, {"instruction": "b"}]))
    as_object = tmp_path / "obj.json"
    as_object.write_text(json.dumps({"version": 1, "data": [{"instruction": "a"}, {"instruction": "b"}]}))
    for path in (as_list, as_object):
        prompts, stats = load_prompts(str(path), sample="first")
        assert [p.messages[0]["content"] for p in prompts] == ["a", "b"]
        assert stats["rows"] == 2


def test_parquet(tmp_path):
    import datasets

    rows = [
        {"messages": [user("one"), assistant("1")]},
        {"messages": [user("two")]},
        {"messages": [user("one"), assistant("uno")]},  # same prompt as row 1 once trimmed
    ]
    path = tmp_path / "p.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    prompts, stats = load_prompts(str(path), sample="first")
    assert [p.messages for p in prompts] == [(user("one"),), (user("two"),)]
    assert stats == {"rows": 3, "empty": 0, "duplicates": 1, "selected": 2}


def test_builtin_demo_sets():
    train, stats = load_prompts("builtin:demo")
    heldout, _ = load_prompts("builtin:demo-heldout")
    assert len(train) == 88 and stats["rows"] == 88 and stats["duplicates"] == 0
    assert len(heldout) == 24
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in heldout}
    texts = {p.messages[0]["content"].lower() for p in train}
    assert not texts & {p.messages[0]["content"].lower() for p in heldout}, "held-out prompts are not training prompts"
    assert all(len(p.messages) == 1 and p.messages[0]["role"] == "user" for p in train + heldout)


def test_builtin_unknown_lists_available():
    with pytest.raises(LiteDeltaError, match="no built-in prompt set 'nope'.*builtin:demo"):
        load_prompts("builtin:nope")


# --- cleaning -----------------------------------------------------------------------------------


def test_dedupe_keeps_first_and_counts(tmp_path):
    rows = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}, {"prompt": [user("b")]}, {"prompt": "c"}]
    prompts, stats = load_prompts(write_jsonl(tmp_path / "d.jsonl", rows), sample="first")
    assert [p.messages[0]["content"] for p in prompts] == ["a", "b", "c"]
    assert stats == {"rows": 5, "empty": 0, "duplicates": 2, "selected": 3}


def test_empty_rows_are_skipped_and_counted(tmp_path):
    rows = [
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": None},
        {"prompt": []},
        {"prompt": [{"role": "system", "content": "Only a system turn."}]},
        {"prompt": [user("Hi"), assistant("x")][1:]},  # only an assistant turn: nothing left after trimming
        {"prompt": "real"},
    ]
    source = tmp_path / "e.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n\n")  # trailing blank lines are fine
    prompts, stats = load_prompts(str(source))
    assert [p.messages for p in prompts] == [(user("real"),)]
    assert stats == {"rows": 7, "empty": 6, "duplicates": 0, "selected": 1}


def test_all_empty_is_an_error(tmp_path):
    with pytest.raises(LiteDeltaError, match="no prompts in .*e.jsonl"):
        load_prompts(write_jsonl(tmp_path / "e.jsonl", [{"prompt": ""}, {"prompt": " "}]))


# --- sampling -----------------------------------------------------------------------------------


@pytest.fixture
def twenty(tmp_path):
    return write_jsonl(tmp_path / "twenty.jsonl", [{"prompt": f"prompt {i}"} for i in range(20)])


def contents(prompts):
    return [p.messages[0]["content"] for p in prompts]


def test_sample_first(twenty):
    prompts, stats = load_prompts(twenty, n=5, sample="first")
    assert contents(prompts) == [f"prompt {i}" for i in range(5)]
    assert [p.index for p in prompts] == list(range(5))
    assert stats["selected"] == 5 and stats["rows"] == 20


def test_sample_random_is_deterministic_seeded_and_in_source_order(twenty):
    a, _ = load_prompts(twenty, n=5, seed=1)
    b, _ = load_prompts(twenty, n=5, seed=1)
    c, _ = load_prompts(twenty, n=5, seed=2)
    assert contents(a) == contents(b)
    assert contents(a) != contents(c)
    numbers = [int(s.split()[1]) for s in contents(a)]
    assert numbers == sorted(numbers) and numbers != list(range(5))
    assert [p.index for p in a] == list(range(5))


def test_sample_n_at_least_count_returns_all(twenty):
    prompts, stats = load_prompts(twenty, n=50, seed=3)
    assert contents(prompts) == [f"prompt {i}" for i in range(20)]
    assert stats["selected"] == 20


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.jsonl", "data/missing.json", "./missing"])
def test_missing_file(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LiteDeltaError, match="prompts file not found: "):
        load_prompts(name)


def test_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(LiteDeltaError, match="empty.jsonl is empty"):
        load_prompts(str(tmp_path / "empty.jsonl"))


def test_blank_lines_only(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(LiteDeltaError, match="has no rows"):
        load_prompts(str(tmp_path / "blank.jsonl"))


def test_non_utf8_line_names_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n\xff\xfe\n')
    with pytest.raises(LiteDeltaError, match="latin.jsonl line 2 is not UTF-8 text"):
        load_prompts(str(path))


def test_invalid_json_line_names_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b",}\n')
    with pytest.raises(LiteDeltaError, match="broken.jsonl line 3 is not valid JSON"):
        load_prompts(str(path))


def test_missing_column_names_column_file_and_columns(tmp_path):
    source = write_jsonl(tmp_path / "cols.jsonl", [{"text": "a", "label": 1}])
    with pytest.raises(LiteDeltaError, match="column 'prompt_text' not found in .*cols.jsonl; columns found: text, label"):
        load_prompts(source, column="prompt_text")
    with pytest.raises(LiteDeltaError, match="no prompt column in .*cols.jsonl .*text, label.*--prompt-column"):
        load_prompts(source)


def test_row_without_the_column_names_the_line(tmp_path):
    source = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "a"}, {"text": "b"}])
    with pytest.raises(LiteDeltaError, match="mixed.jsonl line 2 has no 'prompt' field"):
        load_prompts(source)


@pytest.mark.parametrize(
    "bad, expected",
    [
        ([{"role": "bot", "content": "x"}], "line 2, field 'messages' message 1 has role 'bot'"),
        ([user("x"), {"role": "assistant", "content": 5}], "line 2, field 'messages' message 2 .* string 'content'"),
        (["just a string"], "line 2, field 'messages' message 1 must be an object"),
        ({"role": "user", "content": "x"}, "line 2, field 'messages' must be a list of .*messages, not dict"),
    ],
)
def test_bad_message_row_names_row_and_field(tmp_path, bad, expected):
    source = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [user("fine")]}, {"messages": bad}])
    with pytest.raises(LiteDeltaError, match=f"bad.jsonl {expected}"):
        load_prompts(source)


@pytest.mark.parametrize("column", ["messages", "chosen", "conversations"])
@pytest.mark.parametrize("text", ["hello", ""])
def test_string_in_a_conversation_column_is_refused_naming_the_row(tmp_path, column, text):
    # {"messages": "hello"} used to pass as a one-turn prompt; HH-style "chosen" strings hold the answer too
    source = write_jsonl(tmp_path / "s.jsonl", [{column: [user("fine")]}, {column: text}])
    with pytest.raises(LiteDeltaError, match=f"s.jsonl line 2, field '{column}' must be a list of .*messages, "
                                             "not str; put a plain-text prompt in a 'prompt' field"):
        load_prompts(source)


def test_string_in_a_prompt_column_is_one_user_turn(tmp_path):
    for column in ("prompt", "instruction", "question"):
        source = write_jsonl(tmp_path / f"{column}.jsonl", [{column: "hello"}])
        assert load_prompts(source)[0][0].messages == (user("hello"),)


def test_bad_row_in_json_names_row_number(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}, {"prompt": 7}]))
    with pytest.raises(LiteDeltaError, match="rows.json row 3, field 'prompt' must be a string"):
        load_prompts(str(path))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "prompts.tsv"
    path.write_text("prompt\nhello\n")
    with pytest.raises(LiteDeltaError, match="unsupported extension .tsv: use one of .jsonl, .json, .parquet, .csv"):
        load_prompts(str(path))


def test_hub_dataset_offline_and_not_cached(monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(LiteDeltaError, match="Hub dataset lite-delta-test/absent is not in the local cache"):
        load_prompts("lite-delta-test/absent")


# --- Hub layout, config, Alpaca input, CSV, system column ----------------------------------------


def test_hub_layout_folder_with_config_name(tmp_path):
    from tests.hub_datasets import write_hub_dataset

    folder = write_hub_dataset(tmp_path / "gsm8k", {"main": {"train": [{"question": "2+2?"}]},
                                                    "socratic": {"train": [{"question": "Why 2+2?"}]}})
    prompts, _ = load_prompts(str(folder), config="socratic")
    assert prompts[0].messages == (user("Why 2+2?"),)
    assert load_prompts(str(folder), config="main")[0][0].messages == (user("2+2?"),)
    with pytest.raises(LiteDeltaError, match="has no config 'nope'"):
        load_prompts(str(folder), config="nope")
    with pytest.raises(LiteDeltaError, match="gsm8k.*Config name is missing|gsm8k.*config"):
        load_prompts(str(folder))  # two configs and none named: datasets asks which


def test_prompts_config_is_recorded_and_left_out_while_unset():
    from lite_delta.config import PromptsConfig

    assert "config" not in PromptsConfig(source="openai/gsm8k").model_dump()  # stage keys of older runs unchanged
    assert PromptsConfig(source="openai/gsm8k", config="main").model_dump()["config"] == "main"


def test_alpaca_instruction_and_input_joined_by_a_blank_line(tmp_path):
    rows = [{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
            {"instruction": "Name a colour.", "input": "", "output": "Red"},
            {"instruction": "Name a fruit.", "output": "Apple"}]
    prompts, _ = load_prompts(write_jsonl(tmp_path / "alpaca.jsonl", rows), sample="first")
    assert [p.messages for p in prompts] == [(user("Translate to French.\n\nGood morning"),),
                                             (user("Name a colour."),), (user("Name a fruit."),)]
    # `input` belongs to `instruction` only: another prompt column ignores it
    other = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q?", "input": "extra"}])
    assert load_prompts(other)[0][0].messages == (user("Q?"),)


def test_csv_prompts(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('prompt,note\n"Hello, world",x\n42,y\n"two\nlines",z\n,empty\n', encoding="utf-8")
    prompts, stats = load_prompts(str(path), sample="first")
    assert [p.messages for p in prompts] == [(user("Hello, world"),), (user("42"),), (user("two\nlines"),)]
    assert stats == {"rows": 4, "empty": 1, "duplicates": 0, "selected": 3}


def test_csv_with_more_cells_than_columns_names_the_line(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("prompt\nok\na,b\n", encoding="utf-8")
    with pytest.raises(LiteDeltaError, match=f"{path} line 3 has more cells than the header"):
        load_prompts(str(path))


def test_system_column_is_a_per_prompt_system_message_ahead_of_generation_system(tmp_path):
    from lite_delta.inference.template import with_system

    rows = [{"prompt": "Hi", "system": "Be terse."}, {"prompt": "Hi", "system": ""}, {"prompt": "Hi", "system": "Rhyme."}]
    prompts, stats = load_prompts(write_jsonl(tmp_path / "s.jsonl", rows), sample="first")
    assert [p.messages for p in prompts] == [({"role": "system", "content": "Be terse."}, user("Hi")),
                                             (user("Hi"),),
                                             ({"role": "system", "content": "Rhyme."}, user("Hi"))]
    assert stats["duplicates"] == 0  # the system message is part of the prompt (and of its id)
    # what the generate stage renders: the row's own system message wins over generation.system
    assert with_system(list(prompts[0].messages), "Generic.")[0]["content"] == "Be terse."
    assert with_system(list(prompts[1].messages), "Generic.")[0]["content"] == "Generic."


def test_system_column_that_contradicts_the_conversation_names_the_row(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "A"}, user("Hi")], "system": "B"}]
    with pytest.raises(LiteDeltaError, match="line 1: field 'system' differs from the conversation's own system"):
        load_prompts(write_jsonl(tmp_path / "s.jsonl", rows))


# --- on-policy rounds: shares of the prompts ------------------------------------------------------


def test_prompt_shares_are_disjoint_balanced_ordered_and_seeded():
    prompts, _ = load_prompts("builtin:demo")
    for n in (1, 2, 3, 7):
        shares = [prompt_share(prompts, r, n, seed=0) for r in range(1, n + 1)]
        ids = [p.prompt_id for share in shares for p in share]
        assert len(ids) == len(set(ids)) == len(prompts)  # disjoint, and together all of them
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        for share in shares:  # each in the prompts' own order
            assert [p.index for p in share] == sorted(p.index for p in share)
    first = prompt_share(prompts, 1, 2, seed=0)
    assert prompt_share(prompts, 1, 2, seed=0) == first
    assert prompt_share(prompts, 1, 2, seed=1) != first
    assert first != prompts[: len(first)]  # a seeded draw, not the first half of the file
    # a prompt's share does not depend on the order the source lists them in
    assert {p.prompt_id for p in prompt_share(list(reversed(prompts)), 1, 2, seed=0)} == {p.prompt_id for p in first}
    for r, n in ((0, 2), (3, 2)):
        with pytest.raises(LiteDeltaError, match=f"share {r} of {n}"):
            prompt_share(prompts, r, n)
