"""Pairs from a Hub dataset (ORG/NAME[:CONFIG][@SPLIT]) in TRL's preference schemas, and from CSV.

The Hub is out of reach in tests: a local folder laid out like a Hub dataset repo goes down the very code path
a Hub id takes (``datasets.load_dataset(ID, CONFIG, split=SPLIT)``)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from lite_delta.cli import main
from lite_delta.errors import LiteDeltaError
from lite_delta.train.pairs_io import (HubPairs, load_pairs, pairs_location, pairs_provenance, pairs_source,
                                       pairs_stats, parse_hub_pairs)
from tests.hub_datasets import write_hub_dataset


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


pytestmark = pytest.mark.usefixtures("datasets_cache")  # tests/conftest.py


def hub(tmp_path, rows, name="repo", **configs):
    return write_hub_dataset(tmp_path / name, configs or {"default": {"train": rows}})


# --- the schemas -----------------------------------------------------------------------------------


def test_trl_conversational_with_prompt(tmp_path):
    rows = [{"prompt": [user("Sky?")], "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]}]
    assert load_pairs(hub(tmp_path, rows)) == rows


def test_trl_standard_strings_with_a_system_column(tmp_path):
    rows = [{"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green.", "system": "Be brief."},
            {"prompt": "Sea?", "chosen": "Wet.", "rejected": "Dry.", "system": None}]
    assert load_pairs(hub(tmp_path, rows)) == [
        {"prompt": [system("Be brief."), user("Sky?")], "chosen": [assistant("Blue.")],
         "rejected": [assistant("Green.")]},
        {"prompt": [user("Sea?")], "chosen": [assistant("Wet.")], "rejected": [assistant("Dry.")]},
    ]


def test_implicit_prompt_full_conversations_tulu_style(tmp_path):
    """The Tulu 3 preference mixture's layout: id, source, chosen/rejected full conversations, no prompt."""
    rows = [{"id": "a1", "source": "x",
             "chosen": [system("Hi."), user("Q1"), assistant("A"), user("Q2"), assistant("good")],
             "rejected": [system("Hi."), user("Q1"), assistant("A"), user("Q2"), assistant("bad")]}]
    (pair,) = load_pairs(hub(tmp_path, rows))
    assert pair == {"prompt": [system("Hi."), user("Q1"), assistant("A"), user("Q2")],
                    "chosen": [assistant("good")], "rejected": [assistant("bad")]}


def test_a_dataset_without_preference_columns_is_one_error_naming_both(tmp_path):
    folder = hub(tmp_path, [{"question": "q", "answer": "a"}])
    with pytest.raises(LiteDeltaError) as err:
        load_pairs(folder)
    message = str(err.value)
    assert "has columns question, answer" in message and "`chosen` and `rejected`" in message
    assert str(folder) in message and "\n" not in message


def test_a_bad_row_names_the_dataset_and_row(tmp_path):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": None, "chosen": "a", "rejected": "b"}]
    with pytest.raises(LiteDeltaError, match=r"repo \(split train\) row 2: field `prompt` is missing"):
        load_pairs(hub(tmp_path, rows))


# --- ORG/NAME[:CONFIG][@SPLIT] ----------------------------------------------------------------------


@pytest.mark.parametrize("ref, parsed", [
    ("allenai/tulu-pref", HubPairs("allenai/tulu-pref", None, "train")),
    ("allenai/tulu-pref:main", HubPairs("allenai/tulu-pref", "main", "train")),
    ("allenai/tulu-pref@test", HubPairs("allenai/tulu-pref", None, "test")),
    ("allenai/tulu-pref:main@train[:1000]", HubPairs("allenai/tulu-pref", "main", "train[:1000]")),
    ("/data/my.repo:cfg@validation", HubPairs("/data/my.repo", "cfg", "validation")),
])
def test_parse_hub_pairs(ref, parsed):
    assert parse_hub_pairs(ref) == parsed


@pytest.mark.parametrize("ref", ["org/name:", "org/name@", "org/:x"])
def test_parse_hub_pairs_refuses_empty_parts(ref):
    with pytest.raises(LiteDeltaError, match="ORG/NAME:CONFIG@SPLIT"):
        parse_hub_pairs(ref)


def test_config_and_split_of_a_folder(tmp_path):
    row = {"prompt": "q", "chosen": "a", "rejected": "b"}
    folder = hub(tmp_path, None, default={"train": [row]}, pref={"test": [row, {**row, "prompt": "q2"}]})
    assert len(load_pairs(folder)) == 1
    ref = f"{folder}:pref@test"
    assert pairs_location(ref) == HubPairs(str(folder), "pref", "test")
    assert [p["prompt"][0]["content"] for p in load_pairs(ref)] == ["q", "q2"]
    assert pairs_source(ref) == f"{folder} (config pref, split test)"
    with pytest.raises(LiteDeltaError, match="has no config 'nope'.*pref"):
        load_pairs(f"{folder}:nope")
    with pytest.raises(LiteDeltaError, match="has no split 'train'"):
        load_pairs(f"{folder}:pref")


def test_an_existing_local_path_wins_over_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    pairs = tmp_path / "org" / "name" / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n", encoding="utf-8")
    assert pairs_location("org/name") == pairs.relative_to(tmp_path)  # a pair-stage folder
    assert pairs_location("org/other") == HubPairs("org/other")       # not here: a Hub id
    assert pairs_location("org/other.jsonl") == tmp_path.joinpath("org/other.jsonl").relative_to(tmp_path)
    with pytest.raises(LiteDeltaError, match="org/other.jsonl does not exist"):
        load_pairs("org/other.jsonl")


def test_a_hub_id_not_cached_while_offline_says_so():
    with pytest.raises(LiteDeltaError, match="Hub dataset lite-delta-test/absent-pairs (was not found|is not in)"):
        load_pairs("lite-delta-test/absent-pairs:main@train")


# --- what is recorded -------------------------------------------------------------------------------


def test_provenance_of_a_dataset_and_of_a_file(tmp_path):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}]
    folder = hub(tmp_path, None, pref={"test": rows})
    record = pairs_provenance(f"{folder}:pref@test")
    assert record["dataset"] == str(folder) and record["config"] == "pref" and record["split"] == "test"
    assert record["rows"] == 1 and re.fullmatch(r"[0-9a-f]{16}", record["fingerprint"])
    assert record["revision"] is None  # a local folder has no Hub commit
    stats = pairs_stats(load_pairs(f"{folder}:pref@test"), f"{folder}:pref@test")
    assert stats["rows"] == 1 and stats["source"] == record
    file = tmp_path / "pairs.jsonl"
    file.write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    assert pairs_provenance(tmp_path) == {"path": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}


# --- CSV --------------------------------------------------------------------------------------------


def test_csv_pairs_with_quoted_cells_and_system(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected,system\n"Hi, you","a\nb",c,\n42,x,y,Terse.\n', encoding="utf-8")
    assert load_pairs(path) == [
        {"prompt": [user("Hi, you")], "chosen": [assistant("a\nb")], "rejected": [assistant("c")]},
        {"prompt": [system("Terse."), user("42")], "chosen": [assistant("x")], "rejected": [assistant("y")]},
    ]


def test_csv_without_preference_columns(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("question,answer\nq,a\n", encoding="utf-8")
    with pytest.raises(LiteDeltaError, match=re.escape(f"{path} has columns question, answer; a preference")):
        load_pairs(path)


# --- the CLI ----------------------------------------------------------------------------------------


def _cli_error(capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    return " ".join(err.split())


def test_train_with_a_hub_style_id_reads_it_before_any_model(tmp_path, capsys):
    folder = hub(tmp_path, [{"question": "q", "answer": "a"}])
    err = _cli_error(capsys, ["train", "--pairs", f"{folder}@train", "--student", "no/such-model",
                              "--out", str(tmp_path / "out")])
    assert "has columns question, answer" in err and "`chosen` and `rejected`" in err
    err = _cli_error(capsys, ["train", "--pairs", f"{folder}:nope", "--student", "no/such-model",
                              "--out", str(tmp_path / "out")])
    assert "has no config 'nope'" in err


def test_training_on_a_hub_dataset_records_its_source_in_train_json(tmp_path, tiny_gguf):
    from lite_delta.config import TrainConfig
    from lite_delta.models.student import prepare_student
    from lite_delta.train.stage import train

    rows = [{"prompt": [user(f"List {t}.")], "chosen": [assistant(f"- {t}\n- more {t}")],
             "rejected": [assistant(f"Some {t}.")]} for t in ("fruits", "birds")]
    folder = hub(tmp_path, None, pref={"test": rows})
    cfg = TrainConfig(student=prepare_student(str(tiny_gguf), tmp_path / "student"), pairs=f"{folder}:pref@test",
                      out=tmp_path / "run", batch_size=2, grad_accum=1, max_steps=1, max_length=64, lora_r=4,
                      lora_alpha=8, save_steps=100, warmup_ratio=0.0)
    summary = json.loads((train(cfg, progress=False) / "train.json").read_text())
    assert summary["config"]["pairs"] == f"{folder}:pref@test"
    source = summary["pairs"]["source"]
    assert (source["dataset"], source["config"], source["split"], source["rows"]) == (str(folder), "pref", "test", 2)
    assert source["fingerprint"]
