"""Print a README-ready table (min–max over runs) from `lite-delta bench generate --peer llama-server` JSON files.

    python benchmarks/llama_server/table.py benchmarks/results/peer-*.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def span(values: list[float], digits: int = 1) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if round(lo, digits) == round(hi, digits) else f"{lo:.{digits}f}–{hi:.{digits}f}"


def cell(values: list[float], runs: int, digits: int = 1, unit: str = "") -> str:
    """min–max of one engine's figures; a lever measured in fewer runs than the row says how many."""
    if not values:
        return "–"
    text = span(values, digits) + unit
    return text if len(values) == runs else f"{text} ({len(values)} run{'s' if len(values) > 1 else ''})"


def main(paths: list[str]) -> None:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in paths:
        r = json.loads(Path(path).read_text(encoding="utf-8"))
        groups[(r["workload"], r["prompts"], r["samples_per_prompt"], r["max_tokens"], r["slots"])].append(r)
    engines = sorted({name for rs in groups.values() for r in rs for name in r["runs"]},
                     key=lambda n: (n != "batched", n == "sequential", n == "llama-server", n))
    device = next(iter(groups.values()))[0]["device"]
    print(f"Device: {device}; llama-cpp-python {next(iter(groups.values()))[0]['llama_cpp_python']}\n")
    head = ["workload", "slots", "sequences × max new tokens", "runs"] + [f"{e} tok/s" for e in engines]
    head += [f"batched / {e}" for e in engines if e != "batched"] + ["identical to batched"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (workload, prompts, samples, max_tokens, slots), rs in sorted(groups.items()):
        label = f"{prompts} × {max_tokens}" if samples == 1 else f"{prompts} prompts × {samples} samples × ≤{max_tokens}"
        row = [workload, str(slots), label, str(len(rs))]
        row += [cell([r["runs"][e]["tok_s"] for r in rs if e in r["runs"]], len(rs)) for e in engines]
        row += [cell([r["batched_over"][e] for r in rs if e in r["batched_over"]], len(rs), 2, "×")
                for e in engines if e != "batched"]
        same = defaultdict(list)
        for r in rs:
            for e, n in r["identical_to_batched"].items():
                same[e].append(n)
        row.append(", ".join(f"{e} {min(v)}/{rs[0]['sequences']}" for e, v in same.items()))
        print("| " + " | ".join(row) + " |")
    levers = [e for e in engines if e not in ("batched", "llama-server", "sequential")]
    for (workload, *_), rs in sorted(groups.items()):  # each lever against the peer, run by run
        for e in levers:
            ratios = [r["runs"][e]["tok_s"] / r["runs"]["llama-server"]["tok_s"]
                      for r in rs if e in r["runs"] and "llama-server" in r["runs"]]
            if ratios:
                print(f"\n{workload}: {e} / llama-server {cell(ratios, len(rs), 2, '×')}")


if __name__ == "__main__":
    main(sys.argv[1:])
