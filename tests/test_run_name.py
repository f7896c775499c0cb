"""A recipe's name is a folder inside --runs-dir and nothing else: no '..', no path, no 300-character name."""

from __future__ import annotations

import pytest

from lite_delta.cli import main


@pytest.mark.parametrize("name,message", [
    ("..", "name"), (".", "name"), ("...", "name"), ("a/../..", "name"), ("x" * 300, "name"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_name_that_leaves_the_runs_folder_is_refused_before_anything_is_written(tmp_path, capsys, name, message,
                                                                                   dry_run):
    outside = tmp_path / "generate"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    runs = tmp_path / "runs"
    args = ["run", "--runs-dir", str(runs), "--set", f"name={name}", "--set", "prompts.n=2",
            "--from", "generate", "--until", "generate", *(["--dry-run"] if dry_run else [])]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
    assert (outside / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generate"] + (["runs"] if runs.exists() else [])
    assert not runs.exists() or not any(runs.iterdir())
    assert not (tmp_path / "manifest.json").exists()


def test_a_run_folder_in_use_by_another_run_is_refused(tmp_path, capsys):
    """A second `lite-delta run` of one recipe into one folder would clear stages the first is writing."""
    from lite_delta.files import FolderLock

    run_dir = tmp_path / "runs" / "demo"
    (run_dir / "generate").mkdir(parents=True)
    (run_dir / "generate" / "precious.jsonl").write_text("{}\n")
    with FolderLock(run_dir, "--out"):
        with pytest.raises(SystemExit) as exit_:
            main(["run", "--runs-dir", str(tmp_path / "runs"), "--set", "prompts.n=2", "--until", "generate"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "in use by another lite-delta process" in err and "Traceback" not in err
    assert (run_dir / "generate" / "precious.jsonl").read_text() == "{}\n"
    assert not (run_dir / "manifest.json").exists()
