"""A run with on-policy rounds: which train folder holds its DPO student (lite_delta/layout.py), the report's table of rounds."""

from __future__ import annotations

from lite_delta.layout import round_dir, round_folders, trained_dir


def test_the_last_finished_round_holds_the_student(tmp_path):
    assert trained_dir(tmp_path) == tmp_path / "train"
    for r in (2, 3, 10):
        (round_dir(tmp_path, r) / "train").mkdir(parents=True)
    assert trained_dir(tmp_path) == tmp_path / "train"  # no round finished: round 1's
    (round_dir(tmp_path, 3) / "train" / "train.json").write_text("{}")
    assert trained_dir(tmp_path) == tmp_path / "rounds" / "r3" / "train"
    (round_dir(tmp_path, 10) / "train" / "train.json").write_text("{}")
    assert trained_dir(tmp_path) == tmp_path / "rounds" / "r10" / "train"  # by number, not by name
    (tmp_path / "rounds" / "rx" / "train").mkdir(parents=True)
    (tmp_path / "rounds" / "rx" / "train" / "train.json").write_text("{}")
    assert trained_dir(tmp_path) == tmp_path / "rounds" / "r10" / "train"


def test_the_reports_rounds_table_reads_each_rounds_pairs_and_training(tmp_path):
    import json

    from lite_delta.report import rounds_lines

    def finished(folder, pairs, steps, selected=None, warnings=()):
        (folder / "pairs").mkdir(parents=True)
        (folder / "train").mkdir(parents=True)
        (folder / "pairs" / "stats.json").write_text(json.dumps(
            {"pairs": pairs, "scorer": {"name": "list_items", "chosen_mean": 4.5, "rejected_mean": 0.25}}))
        (folder / "train" / "train.json").write_text(json.dumps(
            {"steps": steps, "last_log": {"loss": 0.5}, "health_warnings": [{"kind": k} for k in warnings],
             **({"selected": selected} if selected else {})}))

    finished(tmp_path, 28, 9, selected={"step": 6, "stopped_at": 9}, warnings=["greedy_broken"])
    assert rounds_lines(tmp_path) == []  # one round: no table
    finished(round_dir(tmp_path, 2), 52, 6)
    table = "\n".join(rounds_lines(tmp_path))
    assert "| 1 | the teachers' answers | 28 | 4.50 / 0.25 | 9 (kept 6) | 0.500 | greedy_broken |" in table
    assert "| 2 | the student's own answers after round 1 | 52 | 4.50 / 0.25 | 6 | 0.500 | quiet |" in table


def test_round_folders_in_round_order(tmp_path):
    assert round_folders(tmp_path) == [tmp_path]
    assert round_folders(tmp_path, 3) == [tmp_path, tmp_path / "rounds" / "r2", tmp_path / "rounds" / "r3"]
    for name in ("r10", "r2", "rx", "r1"):  # r1 is the run folder itself; rx is not a round
        (tmp_path / "rounds" / name).mkdir(parents=True)
    assert round_folders(tmp_path) == [tmp_path, tmp_path / "rounds" / "r2", tmp_path / "rounds" / "r10"]
