"""Where training runs: in this process, in one child process, or across processes `accelerate launch` starts.

`run_training(cfg)` trains in this process when one process is asked for, or when this process is
already one of those accelerate started (`accelerate launch -m lite_delta train ...`). Otherwise it
checks what fails in seconds (backend, output folder, old checkpoints, pairs) once, here, then runs
`python -m accelerate.commands.launch --config_file FILE [--num_processes N] -m lite_delta.train.launch
CONFIG.json` and waits for it. FILE is a shipped config (lite_delta/recipes/accelerate/: ddp, zero3,
fsdp-qlora) or the user's own; without CUDA the processes train on the CPU, joined by gloo.

`train_in_child(kind, cfg)` is how `lite-delta run` trains (DPO and the SFT contrast): in a child process
(`python -m lite_delta.train.launch CONFIG.json --kind dpo|sft`), so that the GPU memory PyTorch caches is
returned when it exits, before llama.cpp allocates its own for export and evaluation, and so that Unsloth's
process-wide patches of transformers (it replaces the Llama and Qwen2 forward functions) never reach the
process that evaluates base and tuned: both are scored through the same, unpatched code, whether the
evaluation follows training or resumes later. The child's error comes back as one line (exit 2); an
unexpected exception's traceback goes to ERROR_LOG in the stage's folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import traceback
from importlib import resources
from pathlib import Path
from typing import Literal

from rich.console import Console

from lite_delta.config import TrainConfig
from lite_delta.errors import LiteDeltaError

log = logging.getLogger(__name__)
console = Console(stderr=True)

SHIPPED_CONFIGS = ("ddp", "zero3", "fsdp-qlora")
ERROR_LOG = "error.log"  # a child's unexpected traceback, in the stage's output folder
INTERRUPT_GRACE_S = 30  # Ctrl-C reaches the child too: time it gets to stop by itself before it is killed


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


def _die_with_parent() -> None:
    """In the child, before it runs: killed when the process that started it dies (Linux), so a parent
    killed mid-training never leaves an orphan holding the GPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_command(kind: str, config: Path, error_file: Path, *, resume: bool, progress: bool,
                  student_cache: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "lite_delta.train.launch", str(config), "--kind", kind, "--error-file", str(error_file)]
    cmd += ["--resume"] if resume else []
    cmd += [] if progress else ["--no-progress"]
    return cmd + (["--student-cache", str(student_cache)] if student_cache else [])


def train_in_child(kind: Literal["dpo", "sft"], cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
                   student_cache: Path | None = None) -> Path:
    """Train (`dpo`: the train stage, through accelerate where it asks for several processes; `sft`: the
    contrast) in a child process and wait; returns cfg.out. Its failure is raised here as one LiteDeltaError."""
    if kind == "dpo" and (cfg.num_processes > 1 or cfg.accelerate_config is not None):
        return launch(cfg, resume=resume, progress=progress)  # accelerate's processes are children already
    with tempfile.TemporaryDirectory(prefix="lite-delta-train-") as tmp:
        config, error_file = Path(tmp) / "train_config.json", Path(tmp) / "error.txt"
        config.write_text(cfg.model_dump_json(), encoding="utf-8")
        cmd = child_command(kind, config, error_file, resume=resume, progress=progress, student_cache=student_cache)
        log.info("training in a child process: %s", shlex.join(cmd))
        child = subprocess.Popen(cmd, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            returncode = child.wait()
        except KeyboardInterrupt:  # the child got the same Ctrl-C: let it stop, then make sure it is gone
            try:
                child.wait(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
        message = error_file.read_text(encoding="utf-8").strip() if error_file.is_file() else ""
    if returncode == 0:
        return cfg.out
    what = "training" if kind == "dpo" else "SFT training"
    if message:
        raise LiteDeltaError(message)
    if returncode < 0:
        cause = " (the system's out-of-memory killer sends SIGKILL)" if -returncode == signal.SIGKILL else ""
        raise LiteDeltaError(f"the {what} process was killed by signal {-returncode}{cause}; rerun to continue "
                             "from the last checkpoint")
    raise LiteDeltaError(f"the {what} process exited with code {returncode} without saying why; its output is above")


def _run_child(kind: str, cfg: TrainConfig, *, resume: bool, progress: bool, student_cache: Path | None) -> None:
    if kind == "sft":
        from lite_delta.train.sft import train_sft

        train_sft(cfg, progress=progress, student_cache=student_cache)
    else:  # one process (train_in_child hands several to accelerate itself)
        from lite_delta.train.stage import train

        train(cfg, resume=resume, progress=progress)


def main(argv: list[str] | None = None) -> None:
    """`python -m lite_delta.train.launch CONFIG.json [--resume]`: one of the processes accelerate started, or
    (with --error-file) the child process `train_in_child` started."""
    parser = argparse.ArgumentParser(prog="python -m lite_delta.train.launch")
    parser.add_argument("config", type=Path, help="a TrainConfig as JSON (written by `launch`)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--kind", choices=("dpo", "sft"), default="dpo")
    parser.add_argument("--error-file", type=Path, help="write a failure here as one line (the parent raises it)")
    parser.add_argument("--student-cache", type=Path, help="where a GGUF student is converted (sft)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = TrainConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
    if args.error_file is None:  # one of accelerate's processes
        from lite_delta.train.stage import train

        try:
            train(cfg, resume=args.resume, progress=args.progress)
        except LiteDeltaError as exc:
            world = os.environ.get("WORLD_SIZE", "1")
            console.print(f"[red]error[/red] (process {process_rank()} of {world}): {exc}", highlight=False,
                          soft_wrap=True)
            sys.exit(exc.exit_code)
        return
    try:
        _run_child(args.kind, cfg, resume=args.resume, progress=args.progress, student_cache=args.student_cache)
    except LiteDeltaError as exc:
        args.error_file.write_text(str(exc), encoding="utf-8")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # the parent got the same Ctrl-C and says it; checkpoints stay for a rerun
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a bug or a library failure: one line up there, the traceback here
        trace = cfg.out / ERROR_LOG
        try:
            cfg.out.mkdir(parents=True, exist_ok=True)
            trace.write_text(traceback.format_exc(), encoding="utf-8")
            where = f"; traceback in {trace}"
        except OSError:
            where = ""
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        args.error_file.write_text(f"{'SFT training' if args.kind == 'sft' else 'training'} failed: "
                                   f"{type(exc).__name__}: {first}{where}", encoding="utf-8")
        sys.exit(1)


if __name__ == "__main__":
    main()
