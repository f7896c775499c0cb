"""DPO − chosen against another evaluation of the same base student: each run's tuned held-out answers paired,
prompt by prompt, with the best (and worst) of k answers of a base evaluation made elsewhere, e.g. with the
Q4_1 file read as is where the run read it as its Q8_0 requantization. Both must cover the same prompts with the
same scorer and k. The bootstrap is the evaluation's own (`compare_utility`).

    python benchmarks/demo_robustness/against_base.py --base native=DIR --base avx=DIR RUN_DIR... --out FILE

RUN_DIR is a run folder (runs/NAME, with evaluate/utility/tuned/utility.json); its build is the --base key
that its path names (…/avx-seed1/… → avx; native otherwise).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from lite_delta.evaluate.utility import compare_utility

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", action="append", required=True, help="BUILD=DIR: a base utility folder (utility.json)")
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    bases = {}
    for item in args.base:
        build, _, folder = item.partition("=")
        bases[build] = json.loads((Path(folder) / "utility.json").read_text(encoding="utf-8"))
    rows = []
    for run in args.runs:
        build = next((b for b in bases if b != "native" and f"{b}-seed" in str(run)), "native")
        base = bases[build]
        tuned = json.loads((run / "evaluate" / "utility" / "tuned" / "utility.json").read_text(encoding="utf-8"))
        own = json.loads((run / "evaluate" / "utility" / "summary.json").read_text(encoding="utf-8"))
        if set(base["per_prompt"]) != set(tuned["per_prompt"]) or base["scorer"] != tuned["scorer"]:
            raise SystemExit(f"{run}: the base evaluation covers other prompts or another scorer")
        other = compare_utility(base, tuned)
        rows.append({
            "run": str(run), "build": build,
            "base_model_read_as": base["settings"]["model"],
            "run_base_read_as": tuned["settings"]["model"],
            "chosen_mean": {"other_base": other["bars"]["chosen"]["mean"], "run": own["bars"]["chosen"]["mean"]},
            "tuned_mean": other["bars"]["tuned"]["mean"],
            "tuned_minus_chosen": {"against_other_base": other["tuned_minus_chosen"],
                                   "in_the_run": own["tuned_minus_chosen"]},
        })
        d = other["tuned_minus_chosen"]
        print(f"{run}: DPO {rows[-1]['tuned_mean']:.2f} − chosen {rows[-1]['chosen_mean']['other_base']:.2f} "
              f"({build} base as {base['settings']['model']}) = {d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
