"""Which train folder holds a run's DPO student (lite_delta/layout.py): the last finished on-policy round's."""

from __future__ import annotations

from lite_delta.layout import round_dir, trained_dir


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
