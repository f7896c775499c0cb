"""Recipes and training configs: no YAML aliases (a 1 kB alias bomb) and no duplicate keys, each one clear line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lite_delta.cli import main

REPO = Path(__file__).resolve().parents[1]


def bomb() -> str:
    lines = ['a0: &a0 ["xxxxxxxxxxxxxxxx"]']
    for i in range(1, 11):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines)


def _run(capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    return err


def test_an_alias_bomb_is_refused_at_once(tmp_path, capsys):
    demo = (REPO / "recipes" / "demo.yaml").read_text()
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(demo + "\n" + bomb().replace("a0:", "x_a0:", 1) + "\n")
    assert len(bomb()) < 1024
    started = time.perf_counter()
    err = _run(capsys, ["run", str(recipe), "--dry-run", "--runs-dir", str(tmp_path / "runs")])
    assert "aliases (*name) are not allowed" in err and "line" in err
    assert time.perf_counter() - started < 10


def test_a_duplicate_section_is_refused_not_silently_replaced(tmp_path, capsys):
    demo = (REPO / "recipes" / "demo.yaml").read_text()
    recipe = tmp_path / "twice.yaml"
    recipe.write_text(demo + "\ntrain:\n  max_steps: 1\n")
    err = _run(capsys, ["run", str(recipe), "--dry-run", "--runs-dir", str(tmp_path / "runs")])
    assert "duplicate key 'train'" in err and f"line {demo.count(chr(10)) + 2}" in err


def test_a_training_config_with_a_duplicate_key_is_one_line(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  max_steps: 2\n  max_steps: 3\n")
    err = _run(capsys, ["train", "--pairs", str(tmp_path), "--student", "x", "--out", str(tmp_path / "o"),
                        "--config", str(config)])
    assert "duplicate key 'max_steps'" in err and "line 3" in err
