"""The train stage across processes: `accelerate launch` starts and coordinates them, each runs `stage.train`.

`run_training(cfg)` trains in this process when one process is asked for, or when this process is
already one of those accelerate started (`accelerate launch -m lite_delta train ...`). Otherwise it
checks what fails in seconds (backend, output folder, old checkpoints, pairs) once, here, then runs
`python -m accelerate.commands.launch --config_file FILE [--num_processes N] -m lite_delta.train.launch
CONFIG.json` and waits for it. FILE is a shipped config (lite_delta/recipes/accelerate/: ddp, zero3,
fsdp-qlora) or the user's own; without CUDA the processes train on the CPU, joined by gloo.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from rich.console import Console

from lite_delta.config import TrainConfig
from lite_delta.errors import LiteDeltaError

log = logging.getLogger(__name__)
console = Console(stderr=True)

SHIPPED_CONFIGS = ("ddp", "zero3", "fsdp-qlora")


def launched() -> bool:
    """True in a process that accelerate launch (torchrun) started: it sets LOCAL_RANK and WORLD_SIZE."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def process_rank() -> int:
    """This process's global rank (0 outside a launch): only rank 0 writes outputs and prints progress."""
    return int(os.environ.get("RANK", "0"))


def shipped_config(name: str) -> Path:
    return Path(str(resources.files("lite_delta") / "recipes" / "accelerate" / f"{name}.yaml"))


def accelerate_config_file(value: str | None) -> Path:
    """A shipped config by name (ddp when unset) or a YAML file, checked by accelerate's own loader."""
    from accelerate.commands.config.config_args import load_config_from_file

    value = value or "ddp"
    path = shipped_config(value) if value in SHIPPED_CONFIGS else Path(value).expanduser()
    if not path.is_file():
        raise LiteDeltaError(f"accelerate_config {value!r}: no such file; name one of {', '.join(SHIPPED_CONFIGS)} "
                             "or a YAML written by `accelerate config`")
    try:
        load_config_from_file(str(path))
    except Exception as exc:  # accelerate raises TypeError/ValueError/YAMLError for a bad file
        raise LiteDeltaError(f"accelerate_config {path}: accelerate cannot read it ({exc})") from None
    return path


def launch_command(cfg: TrainConfig, config_file: Path, train_config: Path, *, resume: bool,
                   progress: bool) -> list[str]:
    """accelerate's launcher around this module; --num_processes only when asked (else the file's count)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    if cfg.num_processes > 1:
        cmd += ["--num_processes", str(cfg.num_processes)]
    cmd += ["-m", "lite_delta.train.launch", str(train_config)]
    return cmd + (["--resume"] if resume else []) + ([] if progress else ["--no-progress"])


def check_before_launch(cfg: TrainConfig, resume: bool) -> None:
    """The train stage's own first checks, once in the launching process, so a mistake is one message."""
    import torch

    from lite_delta.files import writable_dir
    from lite_delta.train.backends import resolve_backend
    from lite_delta.train.pairs_io import drop_degenerate, load_pairs, pairs_source
    from lite_delta.train.stage import last_checkpoint

    resolve_backend(cfg.backend, torch.cuda.is_available())
    out = writable_dir(cfg.out, "--out", create=False)
    if not resume and last_checkpoint(out / "checkpoints"):
        raise LiteDeltaError(f"{out} already has checkpoints: pass --resume to continue, or use a new --out")
    drop_degenerate(load_pairs(cfg.pairs), pairs_source(cfg.pairs))


def launch(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train in the processes `accelerate launch` starts; returns the output folder the main one wrote."""
    config_file = accelerate_config_file(cfg.accelerate_config)
    check_before_launch(cfg, resume)
    with tempfile.TemporaryDirectory(prefix="lite-delta-train-") as tmp:
        train_config = Path(tmp) / "train_config.json"
        train_config.write_text(cfg.model_dump_json(), encoding="utf-8")
        cmd = launch_command(cfg, config_file, train_config, resume=resume, progress=progress)
        log.info("launching: %s", shlex.join(cmd))
        returncode = subprocess.run(cmd).returncode
    if returncode:
        raise LiteDeltaError(
            f"training across processes failed (accelerate launch exited with {returncode}); each process's own "
            f"message is above. Checkpoints in {cfg.out / 'checkpoints'} are kept: rerun with --resume"
        )
    return cfg.out


def run_training(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """The train stage here, or across cfg.num_processes processes (or those of cfg.accelerate_config)."""
    from lite_delta.train.stage import train

    if launched() or (cfg.num_processes == 1 and cfg.accelerate_config is None):
        return train(cfg, resume=resume, progress=progress)
    return launch(cfg, resume=resume, progress=progress)


def main(argv: list[str] | None = None) -> None:
    """`python -m lite_delta.train.launch CONFIG.json [--resume]`: one of the processes accelerate started."""
    parser = argparse.ArgumentParser(prog="python -m lite_delta.train.launch")
    parser.add_argument("config", type=Path, help="a TrainConfig as JSON (written by `launch`)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from lite_delta.train.stage import train

    cfg = TrainConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
    try:
        train(cfg, resume=args.resume, progress=args.progress)
    except LiteDeltaError as exc:
        world = os.environ.get("WORLD_SIZE", "1")
        console.print(f"[red]error[/red] (process {process_rank()} of {world}): {exc}", highlight=False,
                      soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
