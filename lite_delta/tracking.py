"""The rest of a run in the training run's TensorBoard: the pairs' stats, the meter's verdict and the
evaluation's comparison, as scalars (and the verdicts as text) beside the training curves.

Read from the files the stages wrote, at the training run's last step. TensorBoard only: W&B, Trackio and
the others get what transformers sends them during training (a finished run of theirs is not reopened here).
The event file carries its own suffix, so a rerun of the report replaces it instead of drawing points twice.
"""

from __future__ import annotations

from pathlib import Path

from lite_delta.files import parse_json
from lite_delta.layout import trained_dir

RESULTS_SUFFIX = ".lite-delta-results"


def _read(path: Path) -> dict | None:
    try:
        data = parse_json(path.read_bytes(), str(path)) if path.is_file() else None
    except Exception:  # a results file the report already refused: nothing to log from it
        return None
    return data if isinstance(data, dict) else None


def run_scalars(run_dir: Path) -> tuple[dict[str, float], dict[str, str]]:
    """(scalars, texts) from a run folder's pairs/stats.json, meter/meter.json and evaluate/ results."""
    scalars: dict[str, float] = {}
    texts: dict[str, str] = {}
    stats = _read(run_dir / "pairs" / "stats.json")
    if stats:
        scalars["pairs/pairs"] = stats.get("pairs", 0)
        scalars["pairs/candidates"] = stats.get("candidates", 0)
        for name, count in (stats.get("filters") or {}).items():
            scalars[f"pairs/filtered/{name}"] = count
        for side in ("chosen", "rejected"):
            mean = ((stats.get(side) or {}).get("completion_tokens") or {}).get("mean")
            if mean is not None:
                scalars[f"pairs/{side}_tokens_mean"] = mean
    meter = _read(run_dir / "meter" / "meter.json")
    if meter and meter.get("overall"):
        overall = meter["overall"]
        scalars["meter/delta"] = overall["diff"]
        scalars["meter/ci95_low"], scalars["meter/ci95_high"] = overall["ci95"]
        texts["meter/verdict"] = f"{overall['verdict']}: {overall.get('advice', '')}"
    compare = _read(run_dir / "evaluate" / "suite" / "compare" / "compare.json")
    if compare:
        for row in compare.get("tasks", []):
            for key in ("base", "tuned", "diff"):
                scalars[f"evaluate/{row['task']}/{key}"] = row[key]
        macro = compare.get("macro_average") or {}
        for key in ("base", "tuned", "diff"):
            if key in macro:
                scalars[f"evaluate/macro_average/{key}"] = macro[key]
    utility = _read(run_dir / "evaluate" / "utility" / "summary.json")
    if utility:
        for bar, figures in (utility.get("bars") or {}).items():
            scalars[f"evaluate/utility/{bar}"] = figures["mean"]
        for key in ("tuned_minus_chosen", "tuned_minus_base", "tuned_minus_sft"):
            if key in utility:
                scalars[f"evaluate/utility/{key}"] = utility[key]["diff"]
        if "target_met" in utility:
            texts["evaluate/utility/target"] = "met" if utility["target_met"] else "not met"
    return scalars, texts


def log_run_results(run_dir: Path, report_to: list[str]) -> Path | None:
    """Write `run_scalars` into train/tensorboard when the run reports to TensorBoard; the event file, or None."""
    logdir = run_dir / "train" / "tensorboard"
    if "tensorboard" not in report_to and "all" not in report_to or not logdir.is_dir():
        return None
    scalars, texts = run_scalars(run_dir)
    if not scalars and not texts:
        return None
    from torch.utils.tensorboard import SummaryWriter

    summary = _read(trained_dir(run_dir) / "train.json") or {}
    step = int(summary.get("steps") or 0)
    for old in logdir.glob(f"*{RESULTS_SUFFIX}"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(logdir), filename_suffix=RESULTS_SUFFIX)
    try:
        for tag, value in scalars.items():
            writer.add_scalar(tag, float(value), step)
        for tag, text in texts.items():
            writer.add_text(tag, text, step)
    finally:
        writer.close()
    return next(logdir.glob(f"*{RESULTS_SUFFIX}"), None)
