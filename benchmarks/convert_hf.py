"""HF -> GGUF conversion, ours against llama.cpp's own `convert_hf_to_gguf.py`, in one run: wall time and
peak memory (the child's maximum resident set) of each on the same random-weight model of a real shape,
and whether the two files hold the same tensors. Writes JSON with the machine named.

    python benchmarks/convert_hf.py [--shape llama-3.2-3b] [--dtype f16] [--out FILE]

The model (random bf16 weights, Llama 3's tokenizer rebuilt from llama.cpp's vocab GGUF) is written once
into --work; memory is measured per child process with wait4, so each converter starts from nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lite_delta.environment import cores, cpu_name, package_versions  # noqa: E402
from lite_delta.models.random_student import STUDENT_SHAPES, write_random_student  # noqa: E402
from tests.llama_cpp_reference import llama_cpp_source  # noqa: E402

OURS = ("import sys; from lite_delta.models.hf_gguf import convert_hf_to_gguf; "
        "convert_hf_to_gguf(sys.argv[1], sys.argv[2], dtype=sys.argv[3])")


def measured(command: list[str], cwd: Path | None = None) -> dict:
    """Run a child; its wall seconds and peak resident memory (GiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:3]} failed:\n{err[-2000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3.2-3b", choices=sorted(STUDENT_SHAPES))
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/lite-delta-convert-bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    src = llama_cpp_source()
    model = args.work / args.shape
    if not (model / "random_student.json").is_file():
        tokenizer = args.work / "llama3-tokenizer"
        if not (tokenizer / "tokenizer.json").is_file():
            from tests.hf_models import write_tokenizer

            tokenizer.mkdir(parents=True, exist_ok=True)
            write_tokenizer("llama3", tokenizer, src)
        write_random_student(model, tokenizer_from=tokenizer, shape=STUDENT_SHAPES[args.shape], device="cpu")
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    ours_file, ref_file = args.work / f"ours-{args.dtype}.gguf", args.work / f"llama.cpp-{args.dtype}.gguf"
    runs = {
        "lite-delta": measured([sys.executable, "-c", OURS, str(model), str(ours_file), args.dtype]),
        "llama.cpp": measured([sys.executable, str(src / "convert_hf_to_gguf.py"), str(model), "--outfile",
                               str(ref_file), "--outtype", args.dtype], cwd=src),
    }
    same = tensors_equal(ours_file, ref_file)
    result = {
        "benchmark": "convert_hf", "shape": args.shape, "dtype": args.dtype, "weights_gib": round(weights / 2**30, 2),
        "gguf_gib": round(ours_file.stat().st_size / 2**30, 2), "runs": runs, "tensors_identical": same,
        "time_ratio_llama_cpp_over_ours": round(runs["llama.cpp"]["seconds"] / runs["lite-delta"]["seconds"], 2),
        "machine": {"cpu": cpu_name(), "cores": cores()}, "packages": package_versions(),
    }
    for name, run in runs.items():
        print(f"{name:>10}: {run['seconds']} s, peak {run['peak_rss_gib']} GiB")
    print(f"tensors identical: {same}; {result['gguf_gib']} GiB written")
    out = args.out or REPO / "benchmarks" / "results" / f"convert-{args.shape}-{args.dtype}-cpu-1.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(out)
    for f in (ours_file, ref_file):
        f.unlink()


def tensors_equal(a: Path, b: Path) -> bool:
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(str(b)).tensors}
    return set(ta) == set(tb) and all(
        ta[n].tensor_type == tb[n].tensor_type and np.array_equal(np.asarray(ta[n].data).view(np.uint8),
                                                                  np.asarray(tb[n].data).view(np.uint8)) for n in ta)


if __name__ == "__main__":
    main()
