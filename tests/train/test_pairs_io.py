import json
import re

import datasets
import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.pairs import PairConfig, make_pairs
from lite_delta.train.pairs_io import drop_degenerate, load_pairs, pairs_stats


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def load_one(tmp_path, row):
    rows = load_pairs(write_jsonl(tmp_path / "pairs.jsonl", [row]))
    assert len(rows) == 1
    return rows[0]


# --- formats ---------------------------------------------------------------------------------------


def test_trl_conversational_keeps_only_role_and_content(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "Be brief.", "name": "sys"}, user("Hi?")],
        "chosen": [{"role": "assistant", "content": "Hello.", "weight": 1}],
        "rejected": [assistant("Go away.")],
        "chosen_score": 2.0,
    }
    assert load_one(tmp_path, row) == {
        "prompt": [system("Be brief."), user("Hi?")],
        "chosen": [assistant("Hello.")],
        "rejected": [assistant("Go away.")],
    }


def test_trl_conversational_allows_several_answer_turns(tmp_path):
    row = {
        "prompt": [user("Weather?")],
        "chosen": [assistant("Let me look."), {"role": "tool", "content": "sunny"}, assistant("Sunny.")],
        "rejected": [assistant("No idea.")],
    }
    assert load_one(tmp_path, row) == row


def test_plain_strings_become_messages(tmp_path):
    row = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    assert load_one(tmp_path, row) == {
        "prompt": [user("2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
    }


def test_plain_strings_with_system_column(tmp_path):
    row = {"system": "Answer in digits.", "prompt": "2+2?", "chosen": "4", "rejected": "four"}
    assert load_one(tmp_path, row)["prompt"] == [system("Answer in digits."), user("2+2?")]


def test_empty_system_column_adds_nothing(tmp_path):
    row = {"system": "", "prompt": "2+2?", "chosen": "4", "rejected": "5"}
    assert load_one(tmp_path, row)["prompt"] == [user("2+2?")]


def test_string_prompt_with_assistant_only_lists(tmp_path):
    row = {"prompt": "Hi?", "chosen": [assistant("Hello.")], "rejected": [assistant("Bye.")]}
    assert load_one(tmp_path, row) == {
        "prompt": [user("Hi?")],
        "chosen": [assistant("Hello.")],
        "rejected": [assistant("Bye.")],
    }


def test_full_conversations_without_prompt_hh_style(tmp_path):
    row = {
        "chosen": [user("Hi?"), assistant("Hello!"), user("Tell me a joke."), assistant("A good joke.")],
        "rejected": [user("Hi?"), assistant("Hello!"), user("Tell me a joke."), assistant("No.")],
    }
    assert load_one(tmp_path, row) == {
        "prompt": [user("Hi?"), assistant("Hello!"), user("Tell me a joke.")],
        "chosen": [assistant("A good joke.")],
        "rejected": [assistant("No.")],
    }


def test_full_conversations_with_string_prompt_ultrafeedback_style(tmp_path):
    row = {
        "prompt": "Name a colour.",
        "chosen": [user("Name a colour."), assistant("Blue.")],
        "rejected": [user("Name a colour."), assistant("Dog.")],
        "score_chosen": 9.0,
    }
    assert load_one(tmp_path, row) == {
        "prompt": [user("Name a colour.")],
        "chosen": [assistant("Blue.")],
        "rejected": [assistant("Dog.")],
    }


def test_full_conversations_split_before_final_assistant_turns(tmp_path):
    # The shared first answer turn stays with the answers: the prompt ends before the final assistant run.
    row = {
        "chosen": [user("Q"), assistant("Step 1."), assistant("Done.")],
        "rejected": [user("Q"), assistant("Step 1."), assistant("Gave up.")],
    }
    assert load_one(tmp_path, row) == {
        "prompt": [user("Q")],
        "chosen": [assistant("Step 1."), assistant("Done.")],
        "rejected": [assistant("Step 1."), assistant("Gave up.")],
    }


def test_full_conversations_where_rejected_stops_early(tmp_path):
    # rejected ends on the call chosen also makes: the prompt must stop before it, or rejected would be empty.
    tool = {"role": "tool", "content": "42"}
    row = {
        "chosen": [user("Q"), assistant("call calc"), tool, assistant("It is 42.")],
        "rejected": [user("Q"), assistant("call calc")],
    }
    assert load_one(tmp_path, row) == {
        "prompt": [user("Q")],
        "chosen": [assistant("call calc"), tool, assistant("It is 42.")],
        "rejected": [assistant("call calc")],
    }


def test_full_conversations_keep_system_message_in_prompt(tmp_path):
    row = {
        "chosen": [system("S"), user("Q"), assistant("good")],
        "rejected": [system("S"), user("Q"), assistant("bad")],
        "system": "S",  # same text as the conversation's own system message: not doubled
    }
    assert load_one(tmp_path, row)["prompt"] == [system("S"), user("Q")]


def test_mixed_formats_across_rows(tmp_path):
    rows = [
        {"prompt": [user("A")], "chosen": [assistant("a1")], "rejected": [assistant("a2")]},
        {"prompt": "B", "chosen": "b1", "rejected": "b2"},
        {"chosen": [user("C"), assistant("c1")], "rejected": [user("C"), assistant("c2")]},
    ]
    assert load_pairs(write_jsonl(tmp_path / "mixed.jsonl", rows)) == [
        {"prompt": [user(q)], "chosen": [assistant(q.lower() + "1")], "rejected": [assistant(q.lower() + "2")]}
        for q in "ABC"
    ]


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "pairs.jsonl"
    row = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
    path.write_text(f"{row}\n\n{row}\n   \n", encoding="utf-8")
    assert len(load_pairs(path)) == 2


# --- sources ---------------------------------------------------------------------------------------


def completion(model, text):
    """One completion record as the generate stage writes it."""
    return {
        "key": f"{model}|p0|0",
        "prompt_id": "p0",
        "index": 0,
        "sample": 0,
        "messages": [system("Use bold headings."), user("Explain tides.")],
        "completion": text,
        "finish_reason": "stop",
        "prompt_tokens": 12,
        "completion_tokens": len(text.split()),
        "model": model,
        "seed": 1234,
    }


def test_pair_stage_directory_with_metadata_loads(tmp_path):
    strong, weak = "**Moon**\nIt pulls.\n\n**Sun**\nIt helps.", "Water."
    for name, model, text in (("strong", "big", strong), ("weak", "small", weak)):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "completions.jsonl", [completion(model, text)])
    cfg = PairConfig(mode="by_model", chosen=tmp_path / "strong", rejected=tmp_path / "weak", out=tmp_path / "pairs")
    out = make_pairs(cfg)
    raw = json.loads((out / "pairs.jsonl").read_text(encoding="utf-8"))
    assert {"prompt_id", "chosen_model", "rejected_model", "chosen_score", "rejected_score"} <= raw.keys()

    assert load_pairs(out) == load_pairs(str(out / "pairs.jsonl")) == [
        {
            "prompt": [system("Use bold headings."), user("Explain tides.")],
            "chosen": [assistant(strong)],
            "rejected": [assistant(weak)],
        }
    ]


def test_json_list_file(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"prompt": "p", "chosen": "c", "rejected": "r"}]), encoding="utf-8")
    assert load_pairs(path) == [{"prompt": [user("p")], "chosen": [assistant("c")], "rejected": [assistant("r")]}]


def test_parquet_file(tmp_path):
    path = tmp_path / "pairs.parquet"
    rows = [
        {"prompt": [user("A")], "chosen": [assistant("a1")], "rejected": [assistant("a2")], "chosen_score": 1.0},
        {
            "prompt": [system("S"), user("B")],
            "chosen": [assistant("b1"), assistant("b1 again")],
            "rejected": [assistant("b2")],
            "chosen_score": 0.0,
        },
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    assert load_pairs(path) == [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]


def test_parquet_row_errors_are_numbered(tmp_path):
    path = tmp_path / "pairs.parquet"
    rows = [{"prompt": "A", "chosen": "a1", "rejected": "a2"}, {"prompt": "B", "chosen": "b1", "rejected": None}]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(LiteDeltaError, match=re.escape(f"{path} row 2: field `rejected` is missing")):
        load_pairs(path)


def test_pairs_stats():
    rows = [
        {"prompt": [user("q")], "chosen": [assistant("abcd")], "rejected": [assistant("ab")]},
        {"prompt": [user("q")], "chosen": [assistant("a"), assistant("b")], "rejected": [assistant("abcd")]},
    ]
    assert pairs_stats(rows) == {"rows": 2, "chosen_chars_mean": 3.0, "rejected_chars_mean": 3.0, "chosen_longer": 1}
    assert pairs_stats([])["rows"] == 0


def test_degenerate_pairs_are_dropped_and_counted_by_kind(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "good", "rejected": "bad"},
        {"prompt": "q2", "chosen": "same", "rejected": " same\n"},  # identical once stripped
        {"prompt": "q3", "chosen": "", "rejected": ""},  # both empty: the first kind that applies counts
        {"prompt": "q4", "chosen": "x", "rejected": "  "},
        {"prompt": [user("q5")], "chosen": [assistant("a"), assistant("")],
         "rejected": [assistant("a"), assistant("")]},
        {"prompt": [user("q6")], "chosen": [assistant("a")], "rejected": [assistant("a"), assistant("b")]},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    kept, counts = drop_degenerate(load_pairs(path), path)
    assert [row["prompt"][0]["content"] for row in kept] == ["q1", "q6"]
    assert counts == {"identical": 2, "empty_chosen": 1, "empty_rejected": 1, "control_text": 0}


def test_only_degenerate_pairs_is_an_error_naming_the_file_and_counts(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"},
                                                  {"prompt": "q", "chosen": "", "rejected": ""}])
    with pytest.raises(LiteDeltaError, match=re.escape(
            f"{path}: all 2 pairs are degenerate (identical 1, empty chosen 1, empty rejected 0, control text 0), so there is "
            "nothing to learn")):
        drop_degenerate(load_pairs(path), path)


# --- errors ----------------------------------------------------------------------------------------

GOOD = {"prompt": "p", "chosen": "c", "rejected": "r"}
CONV = {"prompt": [user("p")], "chosen": [assistant("c")], "rejected": [assistant("r")]}


@pytest.mark.parametrize(
    "row, field, says",
    [
        ({"prompt": "p", "rejected": "r"}, "chosen", "is missing"),
        ({"prompt": "p", "chosen": "c"}, "rejected", "is missing"),
        ({"chosen": "c", "rejected": "r"}, "prompt", "is missing"),
        ({**GOOD, "prompt": 3}, "prompt", "must be a string"),
        ({**CONV, "prompt": {"role": "user"}}, "prompt", "must be a string or a list of {role, content} messages"),
        ({**CONV, "chosen": 7}, "chosen", "must be a string or a list of {role, content} messages"),
        ({**CONV, "rejected": ["text"]}, "rejected", "must be a string or a list of {role, content} messages"),
        ({**CONV, "chosen": "c"}, "chosen` and `rejected", "must both be strings"),
        ({**CONV, "chosen": [{"role": "bot", "content": "c"}]}, "chosen", "message 1 has role 'bot'"),
        ({**CONV, "prompt": [{"content": "p"}]}, "prompt", "message 1 has role None"),
        ({**CONV, "rejected": [{"role": "assistant", "content": None}]}, "rejected", "needs a string `content`"),
        ({**CONV, "chosen": [assistant("c"), user("more?")]}, "chosen", "must end with an assistant message"),
        ({**CONV, "rejected": []}, "rejected", "is an empty list"),
        ({**CONV, "prompt": [system("s")]}, "prompt", "has no user message"),
        ({**GOOD, "system": 5}, "system", "must be a string"),
        ({**CONV, "prompt": [system("a"), user("p")], "system": "b"}, "system", "differs from the prompt"),
        (
            {"chosen": [user("A"), assistant("a")], "rejected": [user("B"), assistant("b")]},
            "chosen` and `rejected",
            "share no leading messages",
        ),
        (
            {
                "chosen": [user("A"), assistant("x"), user("B"), assistant("b1")],
                "rejected": [user("A"), assistant("y"), user("B"), assistant("b2")],
            },
            "chosen` and `rejected",
            "differ before their last user turn",
        ),
        (
            {"prompt": "Other", "chosen": [user("A"), assistant("a")], "rejected": [user("A"), assistant("b")]},
            "prompt",
            "does not match the first user turn",
        ),
        ({"chosen": [assistant("a")], "rejected": [assistant("b")]}, "chosen` and `rejected", "share no leading"),
    ],
)
def test_bad_row_names_row_and_field(tmp_path, row, field, says):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD, row])
    names_row_and_field = re.escape(f"{path} row 2: field") + r"s? " + re.escape(f"`{field}`")
    with pytest.raises(LiteDeltaError, match=names_row_and_field) as err:
        load_pairs(path)
    assert says in str(err.value)


def test_row_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD, ["p", "c", "r"]])
    with pytest.raises(LiteDeltaError, match=re.escape(f"{path} row 2 must be an object")):
        load_pairs(path)


def test_non_utf8_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}\n')
    with pytest.raises(LiteDeltaError, match=re.escape(f"{path} row 2 is not UTF-8 text")):
        load_pairs(path)


def test_invalid_json_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(LiteDeltaError, match=re.escape(f"{path} row 3 is not valid JSON")):
        load_pairs(path)


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "pairs.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LiteDeltaError, match="holds no pairs"):
        load_pairs(path)


def test_empty_json_list(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(LiteDeltaError, match="holds no pairs"):
        load_pairs(path)


def test_json_file_that_is_not_a_list(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    with pytest.raises(LiteDeltaError, match="must hold a JSON list"):
        load_pairs(path)


def test_invalid_json_file(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text("[{]", encoding="utf-8")
    with pytest.raises(LiteDeltaError, match=re.escape(f"{path} is not valid JSON")):
        load_pairs(path)


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(LiteDeltaError, match=re.escape(f"{missing} does not exist: run `lite-delta pair`")):
        load_pairs(tmp_path / "nope.jsonl")


def test_directory_without_pairs_file(tmp_path):
    with pytest.raises(LiteDeltaError, match=re.escape(f"{tmp_path / 'pairs.jsonl'} does not exist")):
        load_pairs(tmp_path)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("prompt\tchosen\trejected\n", encoding="utf-8")
    with pytest.raises(LiteDeltaError, match="not a pair-stage dir or a .jsonl, .json, .parquet or .csv file"):
        load_pairs(path)
