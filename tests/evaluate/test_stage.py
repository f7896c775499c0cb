"""Resumable predictions: a torn last line is dropped, a corrupt earlier line is an error."""

from __future__ import annotations

import json

import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.evaluate.stage import parse_tasks, read_predictions


def test_a_torn_last_line_is_dropped_and_cut_off(tmp_path):
    path = tmp_path / "predictions.jsonl"
    good = json.dumps({"id": 3, "score": 1.0}) + "\n"
    path.write_text(good + '{"id": 4, "sco')
    assert read_predictions(path, repair=False).keys() == {3}
    assert path.read_text() != good  # left alone without repair
    assert read_predictions(path).keys() == {3}
    assert path.read_text() == good


def test_a_corrupt_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(LiteDeltaError, match="corrupt line"):
        read_predictions(path)


def test_task_lists_are_checked():
    assert parse_tasks("gsm8k, mmlu,gsm8k") == ["gsm8k", "mmlu"]
    with pytest.raises(LiteDeltaError, match="unknown task 'gsm9k'"):
        parse_tasks("gsm9k")
    with pytest.raises(LiteDeltaError, match="GPT-4 judge"):
        parse_tasks("alpaca_eval")
