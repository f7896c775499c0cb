"""The demo's robustness grid: the embedded default run under several seeds and llama.cpp kernel sets.

llama.cpp picks kernels by CPU features, so the demo's sampled teacher answers, and with them its pairs,
differ between machines (BRIEF §10). A demo result users see must hold on all of them; this runs
`lite-delta run` (the embedded default, or --recipe) once per (build, seed), each seed changing both the
generation and the training seed, and reports every run and the worst case. A benchmark, not a test:
CI does not run it (each run is a full demo, ~15 min on 2 cores).

    bash benchmarks/demo_robustness/build_llama.sh avx        # once: a second kernel set
    python benchmarks/demo_robustness/run.py --builds native,avx --seeds 0,1,2

`native` is the llama-cpp-python installed in this environment; any other NAME is the build in
.bench/llama-NAME (put first on PYTHONPATH for that run). Runs resume: a finished (build, seed) is read,
not rerun. Writes benchmarks/results/demo-robustness/<build>-seed<S>.json per run, and grid.json + grid.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "demo-robustness"

BUILD_INFO = """
import json, llama_cpp
print(json.dumps({"llama_cpp": llama_cpp.__version__, "path": llama_cpp.__file__,
                  "system_info": llama_cpp.llama_print_system_info().decode()}))
"""


def build_env(build: str) -> dict:
    env = dict(os.environ)
    if build != "native":
        where = ROOT / ".bench" / f"llama-{build}"
        if not (where / ".built").is_file():
            sys.exit(f"no build {build!r}: run benchmarks/demo_robustness/build_llama.sh {build} first")
        env["PYTHONPATH"] = os.pathsep.join([str(where), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def build_info(build: str) -> dict:
    out = subprocess.run([sys.executable, "-c", BUILD_INFO], env=build_env(build), capture_output=True, text=True,
                         check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    flags = (ROOT / ".bench" / f"llama-{build}" / ".built")
    info["cmake_args"] = flags.read_text().strip() if flags.is_file() else "pip default (GGML_NATIVE: this CPU's features)"
    return info


def run_one(build: str, seed: int, runs_dir: Path, recipe: str | None, extra: list[str], log_dir: Path) -> dict:
    run_root = runs_dir / f"{build}-seed{seed}"
    cmd = [sys.executable, "-m", "lite_delta", "run", *([recipe] if recipe else []), "--runs-dir", str(run_root),
           "--set", f"generation.seed={seed}", "--set", f"train.seed={seed}"]
    for item in extra:
        cmd += ["--set", item]
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_dir / f"{build}-seed{seed}.log", "w") as log:
        proc = subprocess.run(cmd, env=build_env(build), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{build} seed {seed}: lite-delta run exited {proc.returncode} (log: {log_dir}/{build}-seed{seed}.log)")
    wall = time.perf_counter() - started
    run_dir = next(p.parent for p in run_root.glob("*/manifest.json"))
    return collect(run_dir, build, seed, wall)


def collect(run_dir: Path, build: str, seed: int, wall: float | None) -> dict:
    from lite_delta.layout import round_folders
    from lite_delta.report import greedy_breaks

    read = lambda rel: json.loads((run_dir / rel).read_text(encoding="utf-8"))  # noqa: E731 (an absolute path too)
    manifest, stats, summary = read("manifest.json"), read("pairs/stats.json"), read("evaluate/utility/summary.json")
    bars = summary["bars"]
    return {
        "build": build,
        "seed": seed,
        "run_dir": str(run_dir),
        "pairs": stats["pairs"],
        "pair_chosen_mean": stats["scorer"]["chosen_mean"],
        "pair_rejected_mean": stats["scorer"]["rejected_mean"],
        "heldout": {name: bars[name]["mean"] for name in bars},
        "heldout_ci95": {name: bars[name]["ci95"] for name in bars},
        "tuned_minus_chosen": summary["tuned_minus_chosen"],
        "tuned_minus_sft": summary.get("tuned_minus_sft"),
        "sft_minus_chosen": summary.get("sft_minus_chosen"),
        "target_met": summary["target_met"],
        # coherence of every student (issue 26): degenerate share and relevance, and DPO's difference from base
        "coherence": _coherence(summary.get("coherence")),
        "coherent": summary.get("coherent"),
        # the report's greedy quick check (tuned, merged) that the coherence rule calls degenerate: a "met" needs none
        "quick_check_degenerate": greedy_breaks(run_dir),
        # every round's training health (round r >= 2 named: "round 2: both_down"); one round: train/'s
        "health_warnings": [f"round {r}: {w['kind']}" if r > 1 else w["kind"]
                            for r, folder in enumerate(round_folders(run_dir), 1)
                            if (folder / "train" / "train.json").is_file()
                            for w in read(folder / "train" / "train.json").get("health_warnings") or []],
        "stage_seconds": {name: rec.get("seconds") for name, rec in manifest["stages"].items()},
        "wall_seconds_this_call": round(wall, 1) if wall is not None else None,
    }


def _coherence(c: dict | None) -> dict | None:
    if not c:
        return None
    return {"degenerate": {k: v["mean"] for k, v in c["degenerate"].items()},
            "relevance": {k: v["mean"] for k, v in c["relevance"].items()},
            "tuned_degenerate_minus_base": c["degenerate_minus_base"]["tuned"],
            "tuned_relevance_minus_base": c["relevance_minus_base"]["tuned"],
            "bounds": c["bounds"]}


def met(row: dict) -> bool:
    """Both halves of the demo's target: DPO past the chosen answers, and as coherent as the base student, in its
    sampled answers and in the report's greedy quick check."""
    return bool(row["target_met"] and row.get("coherent") and not row.get("quick_check_degenerate"))


def _quick_check(row: dict) -> str:
    if "quick_check_degenerate" not in row:
        return "–"
    return "**degenerate**: " + ", ".join(row["quick_check_degenerate"]) if row["quick_check_degenerate"] else "fine"


def coherence_table(rows: list[dict]) -> str:
    """Per run, each student's degenerate share and relevance (nats/token under the base student)."""
    names = ("base", "rejected", "chosen", "sft", "tuned")
    head = ("| build | seed | degenerate: base / rejected / chosen / SFT / DPO | DPO − base [95% CI] "
            "| relevance: base / rejected / chosen / SFT / DPO | DPO − base [95% CI] | coherent "
            "| greedy quick check | health |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r.get("coherence")
        if not c:
            lines.append(f"| {r['build']} | {r['seed']} | – | – | – | – | – | – | – |")
            continue
        fig = lambda f: " / ".join("–" if n not in c[f] else f"{c[f][n]:.2f}" for n in names)  # noqa: E731
        ci = lambda x: f"{x['diff']:+.2f} [{x['ci95'][0]:+.2f}, {x['ci95'][1]:+.2f}]"  # noqa: E731
        lines.append(f"| {r['build']} | {r['seed']} | {fig('degenerate')} | {ci(c['tuned_degenerate_minus_base'])} | "
                     f"{fig('relevance')} | {ci(c['tuned_relevance_minus_base'])} | "
                     f"{'yes' if r.get('coherent') else '**no**'} | "
                     f"{_quick_check(r)} | {', '.join(r.get('health_warnings') or []) or 'quiet'} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ("| build | seed | pairs | pair chosen / rejected | base | chosen | SFT | DPO | DPO − chosen [95% CI] "
            "| DPO − SFT [95% CI] | met | generate / train / sft / evaluate s | cores |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        h, d, ds, t = r["heldout"], r["tuned_minus_chosen"], r["tuned_minus_sft"], r["stage_seconds"]
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        ci = lambda x: "–" if not x else f"{x['diff']:+.2f} [{x['ci95'][0]:+.2f}, {x['ci95'][1]:+.2f}]"  # noqa: E731
        sec = lambda k: "–" if t.get(k) is None else f"{t[k]:.0f}"  # noqa: E731
        lines.append(f"| {r['build']} | {r['seed']} | {r['pairs']} | {fmt(r['pair_chosen_mean'])} / "
                     f"{fmt(r['pair_rejected_mean'])} | {fmt(h['base'])} | {fmt(h['chosen'])} | {fmt(h.get('sft'))} | "
                     f"{fmt(h['tuned'])} | {ci(d)} | {ci(ds)} | {'yes' if met(r) else '**no**'} | "
                     f"{sec('generate')} / {sec('train')} / {sec('sft')} / {sec('evaluate')} | "
                     f"{(r.get('environment') or {}).get('cores', '–')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--builds", default="native,avx", help="comma-separated: native and/or .bench/llama-NAME builds")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--recipe", default=None, help="recipe YAML (default: the embedded demo)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra KEY=VALUE for every run")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / ".bench" / "demo-grid")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from lite_delta.environment import environment

    builds, seeds = args.builds.split(","), [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    infos = {b: build_info(b) for b in builds}
    rows = []
    for build in builds:
        for seed in seeds:
            path = args.out / f"{build}-seed{seed}.json"
            print(f"== {build} seed {seed}", flush=True)
            row = run_one(build, seed, args.runs_dir, args.recipe, args.extra, args.runs_dir / "logs")
            row["llama_cpp_build"] = infos[build]
            row["environment"] = environment()
            row["recipe"] = args.recipe or "embedded demo"
            row["overrides"] = args.extra
            path.write_text(json.dumps(row, indent=2) + "\n")
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    # the grid is every run on disk (earlier calls' runs too), not only this call's
    rows = [json.loads(f.read_text()) for f in sorted(args.out.glob("*-seed*.json"))]
    diffs = [r["tuned_minus_chosen"]["ci95"][0] for r in rows]
    # the worst run: one that misses either half first, then the lowest lower CI bound of DPO - chosen
    worst = min(rows, key=lambda r: (met(r), r["tuned_minus_chosen"]["ci95"][0]))
    grid = {
        "runs": len(rows),
        "all_met": all(met(r) for r in rows),
        "all_utility_met": all(r["target_met"] for r in rows),
        "all_coherent": all(bool(r.get("coherent")) for r in rows),
        "worst": {"build": worst["build"], "seed": worst["seed"], "tuned_minus_chosen": worst["tuned_minus_chosen"]},
        "median_tuned_minus_chosen": statistics.median(r["tuned_minus_chosen"]["diff"] for r in rows),
        "median_lower_ci": statistics.median(diffs),
        "builds": infos,
        "environment": rows[0]["environment"] if rows else None,
        "rows": rows,
    }
    (args.out / "grid.json").write_text(json.dumps(grid, indent=2) + "\n")
    md = table(rows) + "\n\n" + coherence_table(rows)
    (args.out / "grid.md").write_text(md + "\n")
    print(md)
    print(f"\nall {len(rows)} runs met the target (utility and coherence): {grid['all_met']}; worst: {worst['build']} "
          f"seed {worst['seed']} DPO − chosen {worst['tuned_minus_chosen']['diff']:+.2f} "
          f"{worst['tuned_minus_chosen']['ci95']}, coherent: {worst.get('coherent')}")
    return 0 if grid["all_met"] else 1  # the design is judged by its worst run


if __name__ == "__main__":
    raise SystemExit(main())
