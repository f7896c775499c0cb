"""Where a run keeps what: the one place that knows which train folder holds the run's DPO student."""

from __future__ import annotations

from pathlib import Path

ROUNDS_DIR = "rounds"


def round_dir(run_dir: Path, r: int) -> Path:
    """Round r's folder (r >= 2; round 1 is the run's own generate/, pairs/ and train/)."""
    return Path(run_dir) / ROUNDS_DIR / f"r{r}"


def trained_dir(run_dir: Path) -> Path:
    """The train folder whose adapter/ and train.json are the run's DPO student: the last on-policy round's
    (rounds/rN/train) where the run has finished rounds, else train/. The pipeline removes rounds/ whenever
    round 1 trains again, so a finished later round always went on from this run's round 1."""
    run_dir = Path(run_dir)
    done = [p for p in (run_dir / ROUNDS_DIR).glob("r*/train")
            if p.parent.name[1:].isdigit() and (p / "train.json").is_file()]
    return max(done, key=lambda p: int(p.parent.name[1:])) if done else run_dir / "train"
