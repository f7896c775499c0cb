"""Where a run keeps what: the one place that knows which train folder holds the run's DPO student."""

from __future__ import annotations

from pathlib import Path

ROUNDS_DIR = "rounds"


def round_dir(run_dir: Path, r: int) -> Path:
    """Round r's folder (r >= 2; round 1 is the run's own generate/, pairs/ and train/)."""
    return Path(run_dir) / ROUNDS_DIR / f"r{r}"


def round_folders(run_dir: Path, n: int | None = None) -> list[Path]:
    """Every round's folder in round order, round 1 (the run folder itself) first: rounds 1..n where n is given
    (what a recipe asks for), else the rounds found on disk (rounds/r<k>, ordered by number, not by name)."""
    run_dir = Path(run_dir)
    if n is not None:
        return [run_dir] + [round_dir(run_dir, r) for r in range(2, n + 1)]
    found = [p for p in (run_dir / ROUNDS_DIR).glob("r*") if p.name[1:].isdigit() and int(p.name[1:]) >= 2]
    return [run_dir] + sorted(found, key=lambda p: int(p.name[1:]))


def trained_dir(run_dir: Path) -> Path:
    """The train folder whose adapter/ and train.json are the run's DPO student: the last on-policy round's
    (rounds/rN/train) where the run has finished rounds, else train/. The pipeline removes rounds/ whenever
    round 1 trains again, so a finished later round always went on from this run's round 1."""
    done = [f / "train" for f in round_folders(run_dir)[1:] if (f / "train" / "train.json").is_file()]
    return done[-1] if done else Path(run_dir) / "train"
