"""Eval inference, the two engines side by side in one run: the demo's held-out utility sampling of the
base student through transformers (the dequantized safetensors copy) and through llama.cpp's batched
engine (the GGUF), same prompts, samples, seeds and token budget. Prints and writes JSON with tokens/s of
each and their ratio, and the device it ran on.

    python benchmarks/eval_engines.py [--prompts 12] [--samples 2] [--max-tokens 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lite_delta.config import UtilityEvalConfig
from lite_delta.environment import cores, cpu_name, package_versions
from lite_delta.evaluate.utility import utility_eval
from lite_delta.models.refs import DEMO_MODEL
from lite_delta.models.student import prepare_student


def cpu_flags() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split(":", 1)[1].split() if f in ("avx2", "avx512f", "avx512_vnni", "amx_tile",
                                                                      "amx_int8", "amx_bf16", "fma", "f16c"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="eval-engines-"))
    folder = prepare_student(DEMO_MODEL, work / "student")  # conversion outside the timed part
    runs = {}
    for engine, student in (("transformers", folder), ("llama.cpp", DEMO_MODEL)):
        cfg = UtilityEvalConfig.model_validate({
            "prompts": {"source": "builtin:demo-heldout", "n": args.prompts, "sample": "first"},
            "samples_per_prompt": args.samples, "temperature": 0.9, "max_tokens": args.max_tokens, "seed": 1,
            "engine": engine, "batch_size": 48, "parallel": 16})
        started = time.perf_counter()
        result = utility_eval(cfg, student=student, adapter=None, scorer="list_items", out=work / engine,
                              progress=False, cache_dir=work / "cache")
        seconds = time.perf_counter() - started
        runs[engine] = {"seconds": round(seconds, 1), "new_tokens": result["new_tokens_this_run"],
                        "tok_s": round(result["new_tokens_this_run"] / seconds, 1), "answers": result["n_samples"],
                        "list_items_mean": round(result["mean"], 3)}
        print(f"{engine:>12}: {runs[engine]['new_tokens']} tokens in {seconds:.1f} s = {runs[engine]['tok_s']} tok/s "
              f"(list items mean {result['mean']:.2f})")
    ratio = runs["llama.cpp"]["tok_s"] / runs["transformers"]["tok_s"]
    wall = runs["transformers"]["seconds"] / runs["llama.cpp"]["seconds"]
    print(f"llama.cpp / transformers: {ratio:.2f}x tokens/s, {wall:.2f}x wall time")
    report = {
        "benchmark": "eval_engines", "workload": "demo held-out utility sampling, base student (SmolLM2-135M)",
        "prompts": args.prompts, "samples_per_prompt": args.samples, "max_tokens": args.max_tokens,
        "device": f"CPU: {cpu_name()}, {cores()} cores", "cpu_flags": cpu_flags(), "runs": runs,
        "tok_s_ratio_llama_over_transformers": round(ratio, 2), "wall_ratio": round(wall, 2),
        "versions": package_versions(("torch", "transformers", "llama_cpp_python")),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
