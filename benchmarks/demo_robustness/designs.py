"""Training designs on one finished demo run's pairs: what each does to the held-out utility and coherence.

A full demo run takes 10-14 minutes on 2 cores, most of it generating and evaluating base and SFT students that
a change to the training settings does not touch. This trains only the DPO student, once per design, on the
run's own pairs and converted student, and measures it the way the run's evaluate stage did: the same held-out
prompts, sampling seeds and scorer through llama.cpp; degenerate share and relevance beside the run's base
answers, paired CIs; and, beyond the report, greedy answers to every held-out prompt (the report's quick check
answers one), scored by the same degenerate rule, for the base and each design; and the report's own quick check:
the adapter exported as the run's export stage does (GGUF LoRA, merged and quantized) and the run's quick-check
prompt answered greedily by base + adapter and by the merged model, so a design's verdict is the report's (met:
past the chosen answers, both coherence bounds held, and neither quick-check answer degenerate). About 5 minutes
per design.

    python benchmarks/demo_robustness/designs.py runs/demo \\
        --design default: --design beta25+nll:beta=25,loss=[sigmoid_norm,sft] --out .bench/designs

A design is NAME:FIELD=VALUE,...: fields of the run's training settings (train.json `config`), values as YAML.
Designs differ from the run only in training: prompts and evaluation settings are the run's, and so are the
pairs unless --pairs names others (e.g. the run's pairs plus pairs from more prompts, `lite-delta pair`). A design
trained with the run's own settings reproduces the run's DPO figures (the demo trains deterministically on a
CPU). Writes OUT/<design>/ (train/, tuned/, greedy/), OUT/designs.json and OUT/designs.md; finished designs
are read, not rerun. A benchmark, not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def parse_design(text: str) -> tuple[str, dict]:
    name, _, fields = text.partition(":")
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        sys.exit(f"--design {text!r}: NAME:FIELD=VALUE,... with a name of letters, digits and _.+-")
    overrides = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", fields)):  # commas inside [...] belong to a list
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--design {text!r}: {item!r} is not FIELD=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def greedy(ucfg, scorer: str, student: str, adapter: Path | None, out: Path, cache: Path) -> dict:
    """Greedy answers to every held-out prompt and how many are degenerate (the coherence rule)."""
    from lite_delta.degenerate import degenerate_reason
    from lite_delta.evaluate.utility import read_samples, utility_eval

    cfg = ucfg.model_copy(update={"temperature": 0.0, "samples_per_prompt": 1})
    utility_eval(cfg, student=student, adapter=adapter, scorer=scorer, out=out, k=1, cache_dir=cache,
                 progress=False)
    samples = read_samples(out / "samples.jsonl")
    reasons = {key: degenerate_reason(s["completion"]) for key, s in samples.items()}
    bad = sorted(key for key, why in reasons.items() if why)
    first = min(samples.values(), key=lambda s: s["index"])  # the report's quick check answers this prompt
    return {"n": len(samples), "degenerate": len(bad), "share": len(bad) / max(len(samples), 1),
            "why": {key: reasons[key] for key in bad},
            "quick_check": {"prompt_id": first["prompt_id"], "degenerate": reasons[first["key"]],
                            "opening": first["completion"][:120]}}


def quick_check(run: Path, recipe, folder: Path) -> dict:
    """The report's quick check for this design: the export stage's files and greedy answers (tuned: base GGUF +
    GGUF LoRA; merged: the adapter folded in and quantized), the run's quick-check prompt, the report's rule."""
    from lite_delta.models.export import export
    from lite_delta.report import greedy_breaks

    exported = folder / "export" / "export.json"
    if not exported.is_file():
        prompt = _read(run / "export" / "export.json")["sample"]["prompt"]
        export(folder / "train" / "adapter", recipe.student, folder / "export", quant=recipe.export.quant,
               merge=recipe.export.merge, prompt=prompt, name=folder.name)
    sample = _read(exported)["sample"]
    return {"prompt": sample["prompt"], "breaks": greedy_breaks(folder),
            "openings": {k: sample[k][:160] for k in ("tuned", "merged") if isinstance(sample.get(k), str)}}


def run_design(run: Path, recipe, name: str, overrides: dict, out: Path, pairs: Path) -> dict:
    from lite_delta.config import TrainConfig
    from lite_delta.evaluate.coherence import coherence_eval, per_prompt
    from lite_delta.evaluate.utility import compare_utility, open_engine, utility_eval
    from lite_delta.pipeline import heldout_messages

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    trained = _read(run / "train" / "train.json")
    config = {k: v for k, v in trained["config"].items() if k not in ("student", "pairs", "out")}
    unknown = sorted(set(overrides) - (set(TrainConfig.model_fields) - {"student", "pairs", "out"}))
    if unknown:
        sys.exit(f"design {name}: {', '.join(unknown)} not a training field (lite_delta.config.TrainConfig)")
    config.update(overrides)
    (folder / "train.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    if not (folder / "train" / "adapter" / "adapter_config.json").is_file():
        with open(folder / "train.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", "lite_delta", "train", "--pairs", str(pairs),
                                   "--student", trained["student_path"], "--out", str(folder / "train"),
                                   "--config", str(folder / "train.yaml")], stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode:
            sys.exit(f"design {name}: lite-delta train exited {proc.returncode} (log: {folder / 'train.log'})")

    ucfg = recipe.evaluate.utility.model_copy(update={"engine": "llama.cpp"})
    student, cache = recipe.student, out / "model"
    base_dir = out / "base"
    if not base_dir.is_dir():  # the run's base answers: the same prompts, seeds and engine
        shutil.copytree(run / "evaluate" / "utility" / "base", base_dir)
    base = _read(base_dir / "utility.json")
    k = recipe.generation.samples_per_prompt
    tuned = utility_eval(ucfg, student=student, adapter=folder / "train" / "adapter", scorer=recipe.pairing.scorer,
                         k=k, out=folder / "tuned", cache_dir=cache, progress=False)
    messages = heldout_messages(recipe)
    figures = coherence_eval({"base": base_dir, "tuned": folder / "tuned"}, messages,
                             judge={"model": student, "engine": "llama.cpp", "template_kwargs": {}},
                             open_judge=lambda: open_engine(ucfg, student, None, cache, {}), out=folder,
                             progress=False)
    coherence = {n: per_prompt(r, figures["per_sample"][n], k) for n, r in (("base", base), ("tuned", tuned))}
    summary = compare_utility(base, tuned, coherence=coherence)
    log = [json.loads(line) for line in (folder / "train" / "train_log.jsonl").read_text().splitlines() if line]
    last = [r for r in log if "loss" in r][-1]
    c = summary["coherence"]
    return {
        "design": name, "overrides": overrides, "run": str(run), "pairs_from": str(pairs),
        "pairs": _read(folder / "train" / "train.json")["pairs"]["rows"],
        "steps": last["step"], "last_margin_nats": last["rewards/margins"] / config["beta"],
        "health_warnings": [w["kind"] for w in _read(folder / "train" / "train.json").get("health_warnings") or []],
        "probe": _read(folder / "train" / "train.json").get("probe"),
        "bars": {n: b["mean"] for n, b in summary["bars"].items()},
        "tuned_minus_chosen": summary["tuned_minus_chosen"],
        "degenerate": c["degenerate"]["tuned"]["mean"],
        "degenerate_minus_base": c["degenerate_minus_base"]["tuned"],
        "relevance_minus_base": c["relevance_minus_base"]["tuned"],
        "coherent": summary["coherent"], "target_met": summary["target_met"],
        "greedy": greedy(ucfg, recipe.pairing.scorer, student, folder / "train" / "adapter", folder / "greedy", cache),
        "quick_check": quick_check(run, recipe, folder),
        "train_seconds": _read(folder / "train" / "train.json").get("seconds"),  # the training loop, as the run logs it
    }


def _opening(check: dict) -> str:
    text = " ".join(check["opening"].split())[:60].replace("|", "\\|")
    return f"`{text}…`" + (f" ({check['degenerate']})" if check["degenerate"] else "")


def _report_check(row: dict) -> str:
    check = row.get("quick_check")
    if not check:
        return "–"  # a row from before the export step
    return ", ".join(check["breaks"]).replace("|", "\\|") or "intact"


def _met(row: dict) -> str:
    check = row.get("quick_check")
    if not check:
        return "–"
    return "yes" if row["target_met"] and row["coherent"] and not check["breaks"] else "**no**"


def table(rows: list[dict], base_greedy: dict) -> str:
    head = ("| design | pairs | DPO | DPO − chosen [95% CI] | degenerate | relevance − base [95% CI] | coherent "
            "| past chosen and coherent, sampled "
            "| greedy degenerate | quick-check prompt, greedy | report's quick check (tuned, merged) | met, as the report "
            "| last-step margin (nats/pair) | health |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    ci = lambda x: f"{x['diff']:+.2f} [{x['ci95'][0]:+.2f}, {x['ci95'][1]:+.2f}]"  # noqa: E731
    for r in rows:
        g = r["greedy"]
        lines.append(f"| {r['design']} | {r['pairs']} | {r['bars']['tuned']:.2f} | {ci(r['tuned_minus_chosen'])} | "
                     f"{r['degenerate']:.2f} | {ci(r['relevance_minus_base'])} | {'yes' if r['coherent'] else '**no**'} | "
                     f"{'yes' if r['target_met'] and r['coherent'] else '**no**'} | {g['degenerate']}/{g['n']} | "
                     f"{_opening(g['quick_check'])} | {_report_check(r)} | {_met(r)} | "
                     f"{r['last_margin_nats']:.0f} | {', '.join(r['health_warnings']) or 'quiet'} |")
    lines.append(f"\nbase student: greedy degenerate {base_greedy['degenerate']}/{base_greedy['n']}; "
                 f"utility base {rows[0]['bars']['base']:.2f}, chosen {rows[0]['bars']['chosen']:.2f}" if rows else "")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished demo run folder (runs/NAME)")
    ap.add_argument("--design", action="append", required=True, help="NAME:FIELD=VALUE,... (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pairs", type=Path, default=None, help="train on these pairs (a pairs folder or file) instead of "
                    "the run's: e.g. the run's pairs with more prompts' pairs added")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from lite_delta.config import load_recipe

    run = args.run.resolve()
    for rel in ("manifest.json", "train/train.json", "pairs", "evaluate/utility/base/utility.json"):
        if not (run / rel).exists():
            sys.exit(f"{run}: no {rel}; designs.py needs a finished run with a utility evaluation")
    designs = [parse_design(d) for d in args.design]
    pairs = (args.pairs or run / "pairs").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:  # the recipe the run used
        yaml.safe_dump(_read(run / "manifest.json")["recipe"], f)
    recipe = load_recipe(f.name)
    Path(f.name).unlink()
    if not recipe.student.lower().endswith(".gguf") or not recipe.evaluate or not recipe.evaluate.utility:
        sys.exit(f"{run}: designs.py needs a GGUF student and a utility evaluation (the demo's kind of run)")
    base_greedy = greedy(recipe.evaluate.utility.model_copy(update={"engine": "llama.cpp"}), recipe.pairing.scorer,
                         recipe.student, None,
                         args.out / "base-greedy", args.out / "model")
    rows = []
    for name, overrides in designs:
        path = args.out / name / "row.json"
        row = _read(path) if path.is_file() else None
        if not row or (row["overrides"], row["run"], row["pairs_from"]) != (overrides, str(run), str(pairs)):
            print(f"== {name} {overrides}", flush=True)
            row = run_design(run, recipe, name, overrides, args.out, pairs)
            path.write_text(json.dumps(row, indent=2) + "\n")
        elif "quick_check" not in row:  # a row from before the export step: its trained adapter is there
            row["quick_check"] = quick_check(run, recipe, args.out / name)
            path.write_text(json.dumps(row, indent=2) + "\n")
        rows.append(row)
        print(table([row], base_greedy).splitlines()[2], flush=True)
    (args.out / "designs.json").write_text(json.dumps({"run": str(run), "base_greedy": base_greedy, "rows": rows},
                                                      indent=2) + "\n")
    md = table(rows, base_greedy)
    (args.out / "designs.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
