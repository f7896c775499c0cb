"""Base vs tuned: per-task differences with paired bootstrap 95% CIs, a markdown table and a chart.

Items are paired by id (both runs scored the same rows); each bootstrap draw resamples the paired
items of every task with replacement (within subjects for MMLU, whose score is a macro average),
recomputes both scores, and takes the difference. The macro average's CI comes from the same draws.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lite_delta.bootstrap import N_BOOTSTRAP, group_mean, resample_indices
from lite_delta.errors import LiteDeltaError
from lite_delta.evaluate.stage import PREDICTIONS_FILE, RESULTS_FILE, read_predictions
from lite_delta.files import parse_json, writable_dir, write_json, write_text


def _load(run: Path) -> dict:
    path = Path(run) / RESULTS_FILE
    if not path.is_file():
        raise LiteDeltaError(f"no {RESULTS_FILE} in {run}: run `lite-delta eval --out {run}` first")
    data = parse_json(path.read_bytes(), str(path))
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, dict) or not all(
            isinstance(t, dict) and isinstance(t.get("settings"), dict)
            and isinstance(t.get("ids", []), list) for t in tasks.values()):
        raise LiteDeltaError(f"{path} is not a `lite-delta eval` results file (an object with `tasks`, each with "
                             f"`settings`): rerun `lite-delta eval --out {run}`")
    return data


def _scores(items: dict, ids: list, where: Path) -> np.ndarray:
    try:
        scores = np.array([float(items[i]["score"]) for i in ids])
    except (KeyError, TypeError, ValueError):
        raise LiteDeltaError(f"{where}: a prediction without a numeric `score`: rerun `lite-delta eval`") from None
    if not np.all(np.isfinite(scores)):
        raise LiteDeltaError(f"{where}: a prediction whose `score` is not finite: rerun `lite-delta eval`")
    return scores


def compare(base_dir: Path, tuned_dir: Path, out: Path, *, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    writable_dir(out, "--out", create=False)
    base, tuned = _load(base_dir), _load(tuned_dir)
    common = [t for t in base.get("tasks", {}) if t in tuned.get("tasks", {})]
    if not common:
        raise LiteDeltaError(f"{base_dir} and {tuned_dir} share no evaluated task")
    rng = np.random.default_rng(seed)
    rows, warnings, base_draws, tuned_draws = [], [], [], []
    for task in common:
        b_set, t_set = base["tasks"][task]["settings"], tuned["tasks"][task]["settings"]
        for key in ("prompt_format", "max_tokens", "samples", "temperature", "data_sha256"):
            if b_set.get(key) != t_set.get(key):
                warnings.append(f"{task}: {key} differs ({b_set.get(key)!r} vs {t_set.get(key)!r})")
        b_items = read_predictions(Path(base_dir) / task / PREDICTIONS_FILE, repair=False)
        t_items = read_predictions(Path(tuned_dir) / task / PREDICTIONS_FILE, repair=False)
        b_ids = set(base["tasks"][task].get("ids", b_items))
        t_ids = set(tuned["tasks"][task].get("ids", t_items))
        ids = sorted(b_ids & t_ids & set(b_items) & set(t_items))
        if not ids:
            warnings.append(f"{task}: no item scored in both runs; left out")
            continue
        if len(ids) < max(len(b_ids), len(t_ids)):
            warnings.append(f"{task}: only {len(ids)} of {len(b_ids)}/{len(t_ids)} items are in both runs")
        b = _scores(b_items, ids, Path(base_dir) / task / PREDICTIONS_FILE)
        t = _scores(t_items, ids, Path(tuned_dir) / task / PREDICTIONS_FILE)
        strata = [b_items[i].get("stratum") for i in ids]
        groups = np.array([str(s) for s in strata]) if task == "mmlu" else None
        idx = resample_indices(len(ids), groups, rng, n_bootstrap)
        bd, td = group_mean(b[idx], groups), group_mean(t[idx], groups)
        base_draws.append(bd)
        tuned_draws.append(td)
        delta = td - bd
        diff = float(group_mean(t, groups) - group_mean(b, groups))
        rows.append({
            "task": task, "n": len(ids), "base": float(group_mean(b, groups)), "tuned": float(group_mean(t, groups)),
            "diff": diff, "ci95": [float(np.percentile(delta, 2.5)), float(np.percentile(delta, 97.5))],
            "p_tuned_not_better": float(np.mean(delta <= 0)),
            "wins": int(np.sum(t > b)), "losses": int(np.sum(t < b)), "ties": int(np.sum(t == b)),
        })
    if not rows:
        raise LiteDeltaError("no task has items scored in both runs")
    macro_b, macro_t = np.mean(base_draws, axis=0), np.mean(tuned_draws, axis=0)
    macro = {
        "tasks": [r["task"] for r in rows],
        "base": float(np.mean([r["base"] for r in rows])),
        "tuned": float(np.mean([r["tuned"] for r in rows])),
    }
    macro["diff"] = macro["tuned"] - macro["base"]
    macro["ci95"] = [float(np.percentile(macro_t - macro_b, 2.5)), float(np.percentile(macro_t - macro_b, 97.5))]
    report = {
        "base": {"dir": str(base_dir), "model": base.get("model"), "adapter": base.get("adapter")},
        "tuned": {"dir": str(tuned_dir), "model": tuned.get("model"), "adapter": tuned.get("adapter")},
        "bootstrap": {"draws": n_bootstrap, "seed": seed, "paired_by": "item id",
                      "mmlu": "resampled within subjects (macro average)"},
        "tasks": rows,
        "macro_average": macro,
        "warnings": warnings,
        "only_in_one_run": sorted(set(base.get("tasks", {})) ^ set(tuned.get("tasks", {}))),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", report)
    write_text(out / "compare.md", markdown_table(report))
    chart(report, out / "compare.png")
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown_table(report: dict) -> str:
    lines = [
        f"base: `{report['base']['model']}`{' + ' + report['base']['adapter'] if report['base']['adapter'] else ''}  ",
        f"tuned: `{report['tuned']['model']}`{' + ' + report['tuned']['adapter'] if report['tuned']['adapter'] else ''}",
        "",
        "| task | n | base | tuned | diff | 95% CI (paired bootstrap) | wins / losses / ties |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["tasks"]:
        lo, hi = r["ci95"]
        lines.append(f"| {r['task']} | {r['n']} | {_pct(r['base'])} | {_pct(r['tuned'])} | {100 * r['diff']:+.1f} | "
                     f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {r['wins']} / {r['losses']} / {r['ties']} |")
    m = report["macro_average"]
    lo, hi = m["ci95"]
    lines.append(f"| **macro average** | {len(m['tasks'])} tasks | {_pct(m['base'])} | {_pct(m['tuned'])} | "
                 f"**{100 * m['diff']:+.1f}** | [{100 * lo:+.1f}, {100 * hi:+.1f}] | |")
    lines += ["", (f"Scores in %. {report['bootstrap']['draws']} bootstrap draws over items paired by id. "
                   "A reduced subset: not comparable 1:1 with the full Tulu 3 suite.")]
    lines += [f"- warning: {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["tasks"] + [{"task": "macro avg", **report["macro_average"]}]
    names = [r["task"] for r in rows]
    diffs = np.array([100 * r["diff"] for r in rows])
    lo = diffs - np.array([100 * r["ci95"][0] for r in rows])
    hi = np.array([100 * r["ci95"][1] for r in rows]) - diffs
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(rows) + 2), 3.6), dpi=120)
    colors = ["#2a9d8f" if d >= 0 else "#e76f51" for d in diffs]
    ax.bar(names, diffs, color=colors, yerr=[lo, hi], capsize=4)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("tuned - base (points)")
    ax.set_title("Tuned vs base, paired bootstrap 95% CI")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
