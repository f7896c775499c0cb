"""The measurements of the prepared GPU run (called by benchmarks/gpu/run.sh; --dry-run: tiny shapes, no CUDA).

Steps, each under its own time budget and the run's deadline, each writing its results to OUT as soon as
it has them (a run cut short returns what it finished); at most 8 files come back from a device call:

  env.json         machine, driver, CUDA, torch and package versions, llama.cpp's GPU offload
  generate.jsonl   `lite-delta bench generate` per stand-in model and slot count: batched vs sequential
                   tokens/s and the GPU memory nvidia-smi saw while it ran; at 32 and 64 slots also sampling
                   on the device against the host (device_over_host)
  train.json       `lite-delta bench train --backend both` on the random Llama-3.1-8B-shaped student, NF4,
                   max_length 1024/2048 x batch 1/2/4 beside the planner (rows of a backend cut short by the
                   budget are taken from its own file, written after every setting)
  train-fp16.json  a short fp16 QLoRA run on both backends, forced on a bf16 card: the T4 path (GradScaler)
  suite.json       `lite-delta eval --engine transformers` on a few GSM8K and MMLU items with the 8B student
                   (NF4, batch 8): the Hub-student evaluation path, its precision and items/s
  e2e.json         `lite-delta run` (the demo recipe at smoke size, a random stand-in model) with CUDA: training
                   in its child process, export and evaluation through CUDA llama.cpp
  run.log          what run.sh and this script printed (errors.jsonl, when a step fails, is the eighth file)

Stand-in models are written once into --work (random weights: speed and memory do not depend on them);
`--prepare-only` writes the ones that need no llama.cpp (run.sh starts it during the CUDA build).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lite_delta.models.random_gguf import SHAPES, LlamaShape  # noqa: E402
from lite_delta.models.random_student import STUDENT_SHAPES  # noqa: E402

SIZES = {
    "gpu": {
        "generate_models": {"qwen2.5-3b": SHAPES["qwen2.5-3b"], "qwen2.5-1.5b": SHAPES["qwen2.5-1.5b"]},
        "quant": "Q4_K_M", "slots": [1, 8, 32, 64], "device_sampling_slots": [32, 64], "max_tokens": 64,
        "threads": None,
        "student": "llama-3.1-8b", "max_lengths": [1024, 2048], "batches": [1, 2, 4], "steps": 3, "warmup": 1,
        # the T4 path on an H200: fp16 autocast, GradScaler, NF4 base; a small student (only the dtypes matter)
        "fp16": {"student": "tiny", "precision": "fp16", "max_length": 256, "batch": 2, "steps": 2, "warmup": 1},
        "suite": {"tasks": "gsm8k,mmlu", "limit": 8, "max_tokens": 64, "batch_size": 8},
        "e2e_model": SHAPES["smollm2-135m"], "e2e_quant": "Q4_1",
        "budget": {"generate": 90, "train": 180, "fp16": 60, "suite": 75, "e2e": 75},
    },
    "dry": {
        "generate_models": {"tiny-a": SHAPES["tiny"], "tiny-b": LlamaShape(n_embd=128, n_ff=256)},
        "quant": "Q4_K_M", "slots": [1, 4], "device_sampling_slots": [4], "max_tokens": 8,
        "threads": 1,  # spinning threads stall a busy CPU
        "student": "tiny", "max_lengths": [64], "batches": [1], "steps": 1, "warmup": 1,
        "fp16": {"student": "tiny", "precision": "auto", "max_length": 64, "batch": 1, "steps": 1, "warmup": 0},
        "suite": {"tasks": "gsm8k", "limit": 2, "max_tokens": 8, "batch_size": 2},
        "e2e_model": SHAPES["tiny"], "e2e_quant": "Q8_0",
        # correctness, not speed: a busy CPU is slow
        "budget": {"generate": 150, "train": 300, "fp16": 150, "suite": 150, "e2e": 420},
    },
}
# The demo recipe at smoke size: every stage runs once, quickly (train and eval through the GPU backends).
E2E_SETS = ["prompts.n=3", "generation.samples_per_prompt=2", "generation.max_tokens=16", "generation.parallel=4",
            "pairing.min_margin=0", "train.max_steps=2", "train.batch_size=2", "train.grad_accum=1",
            "train.max_length=256", "train.save_steps=1000", "evaluate.utility.prompts.n=2",
            "evaluate.utility.samples_per_prompt=2", "evaluate.utility.max_tokens=16"]


STEPS = ("generate", "train", "fp16", "suite", "e2e")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def lite_delta(*args: str) -> list[str]:
    return [sys.executable, "-m", "lite_delta.cli", *args]


class GpuMemory(threading.Thread):
    """The most GPU memory nvidia-smi reports in use while a command runs (MiB); None without nvidia-smi."""

    def __init__(self, enabled: bool):
        super().__init__(daemon=True)
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.peak: int | None = None
        self.stop = threading.Event()

    def run(self):
        while self.enabled and not self.stop.is_set():
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=10).stdout.split()
                if used:
                    self.peak = max(self.peak or 0, int(used[0]))
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
            self.stop.wait(0.5)


def run_guarded(command: list[str], timeout: float, *, env: dict | None = None, gpu: bool = False) -> dict:
    """Run a command in its own process group, killed with all its children at `timeout`."""
    timeout = max(1.0, timeout)
    memory = GpuMemory(gpu)
    memory.start()
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env, cwd=REPO)
    try:
        output, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        timed_out = True
    memory.stop.set()
    memory.join(timeout=15)
    print(output[-4000:], end="", flush=True)
    return {"returncode": proc.returncode, "timed_out": timed_out, "seconds": round(time.perf_counter() - started, 2),
            "gpu_memory_peak_mib": memory.peak, "output_tail": output[-1500:]}


class Clock:
    def __init__(self, budget: float):
        self.deadline = time.monotonic() + budget

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, budget: float) -> "Clock":
        step = Clock(0)
        step.deadline = min(self.deadline, time.monotonic() + budget)
        return step


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")


def write_json(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---- stand-in models -------------------------------------------------------------------------------------


def write_tokenizer_carrier(path: Path) -> Path:
    """A 1-layer random GGUF holding the demo model's BPE vocabulary and chat template (~5 MB, where the demo
    GGUF is 93 MB): the tokenizer every stand-in copies."""
    from lite_delta.models.random_gguf import write_random_gguf
    from lite_delta.models.refs import DEMO_MODEL, resolve_model

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = LlamaShape(n_embd=16, n_layer=1, n_head=2, n_head_kv=1, n_ff=32, n_ctx=8192)
    write_random_gguf(path.with_suffix(".tmp"), tokenizer_from=resolve_model(DEMO_MODEL), shape=shape)
    return path.with_suffix(".tmp").replace(path)


def tokenizer_gguf(work: Path, dry: bool) -> Path:
    """The carried tokenizer carrier there; in a dry run, one written into the work folder first."""
    if dry:
        path = work / "tokenizer.gguf"
        return path if path.is_file() else write_tokenizer_carrier(path)
    carried = REPO / ".device" / "models" / "tokenizer.gguf"
    if not carried.is_file():
        raise SystemExit(f"{carried} is missing: run benchmarks/gpu/prepare.sh here and carry .device/models")
    return carried


def f16_gguf(work: Path, name: str, shape: LlamaShape, tokenizer: Path, seed: int = 0) -> Path:
    from lite_delta.models.random_gguf import write_random_gguf

    path = work / f"{name}-f16.gguf"
    if not path.is_file():
        log(f"writing random {name} GGUF (F16)")
        write_random_gguf(path.with_suffix(".tmp"), tokenizer_from=tokenizer, shape=shape, seed=seed)
        path.with_suffix(".tmp").replace(path)
    return path


def quantized_gguf(work: Path, name: str, shape: LlamaShape, tokenizer: Path, quant: str, seed: int = 0) -> Path:
    from lite_delta.models.random_gguf import quantize

    path = work / f"{name}-{quant.lower()}.gguf"
    if not path.is_file():
        src = f16_gguf(work, name, shape, tokenizer, seed)
        log(f"quantizing {name} to {quant}")
        quantize(src, path.with_suffix(".tmp"), quant)
        path.with_suffix(".tmp").replace(path)
        src.unlink()  # disk: the 8B student needs ~16 GB more
    return path


def student_folder(work: Path, shape_name: str, tokenizer: Path) -> Path:
    """The random bf16 Llama student (safetensors shards) with the carried tokenizer and chat template."""
    from lite_delta.models.random_student import write_random_student
    from lite_delta.models.student import prepare_student

    folder = work / f"student-{shape_name}"
    if (folder / "random_student.json").is_file():
        return folder
    log(f"writing random {shape_name} student (bf16 safetensors)")
    tokenizer_folder = prepare_student(str(tokenizer), work / "tokenizer")
    write_random_student(folder, tokenizer_from=tokenizer_folder, shape=STUDENT_SHAPES[shape_name])
    return folder


def prepare(work: Path, size: dict, dry: bool) -> None:
    """What needs no llama.cpp: the F16 generation stand-ins and the training student."""
    tokenizer = tokenizer_gguf(work, dry)
    for name, shape in size["generate_models"].items():
        if not (work / f"{name}-{size['quant'].lower()}.gguf").is_file():
            f16_gguf(work, name, shape, tokenizer)
    student_folder(work, size["student"], tokenizer)
    student_folder(work, size["fp16"]["student"], tokenizer)


def benchdata(dry: bool) -> Path:
    """The suite's rows: carried as .device/benchdata there (prepare.sh); the shared folder beside the clone here."""
    if dry:
        configured = os.environ.get("LITE_DELTA_BENCHDATA")
        return Path(configured) if configured else REPO.parent / "shared" / "benchdata"
    return REPO / ".device" / "benchdata"


# ---- steps ---------------------------------------------------------------------------------------------


def step_env(out: Path, dry: bool) -> dict:
    from lite_delta.environment import environment

    env = environment()
    try:
        import llama_cpp

        env["llama_cpp_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        env["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace")
    except Exception as exc:  # noqa: BLE001 - recorded, not raised: the training steps need no llama.cpp
        env["llama_cpp_error"] = repr(exc)
    env["dry_run"] = dry
    write_json(out / "env.json", env)
    return env


def step_generate(out: Path, work: Path, size: dict, clock: Clock, env: dict, dry: bool) -> None:
    tokenizer = tokenizer_gguf(work, dry)
    path = out / "generate.jsonl"
    for name, shape in size["generate_models"].items():
        try:
            model = quantized_gguf(work, name, shape, tokenizer, size["quant"])
        except Exception as exc:  # noqa: BLE001
            append_jsonl(path, {"benchmark": "generate", "stand_in": name, "error": repr(exc), "dry_run": dry})
            continue
        for slots in size["slots"]:
            record = {"benchmark": "generate", "stand_in": name, "shape": asdict(shape), "quant": size["quant"],
                      "slots": slots, "dry_run": dry, "gpu": env.get("gpu"), "driver": env.get("driver"),
                      "cuda": env.get("cuda"), "packages": env.get("packages")}
            if clock.left() < 10:
                append_jsonl(path, {**record, "skipped": "time budget"})
                continue
            result_file = work / f"generate-{name}-{slots}.json"
            result_file.unlink(missing_ok=True)
            prompts = max(slots, 4)
            command = lite_delta("bench", "generate", "--model", str(model), "--parallel", str(slots),
                                 "--prompts", str(prompts), "--max-tokens", str(size["max_tokens"]),
                                 "--out", str(result_file))
            if slots in size["device_sampling_slots"]:  # the same run also samples on the device
                command.append("--device-sampling")
            if size["threads"]:
                command += ["--threads", str(size["threads"])]
            run = run_guarded(command, clock.left() - 5, gpu=not dry)
            record["gpu_memory_peak_mib"] = run["gpu_memory_peak_mib"]
            if result_file.is_file():
                record.update(json.loads(result_file.read_text()))
            else:
                record.update({k: run[k] for k in ("returncode", "timed_out", "output_tail")})
            append_jsonl(path, record)


def bench_train(out: Path, work: Path, clock: Clock, dry: bool, *, name: str, student_shape: str,
                max_lengths: list[int], batches: list[int], steps: int, warmup: int, extra: list[str] = ()) -> None:
    """`lite-delta bench train --backend both` into work/NAME.json (and its per-backend files), merged into
    out/NAME.json: a backend the time budget cut short keeps the rows its own file has."""
    student = student_folder(work, student_shape, tokenizer_gguf(work, dry))
    merged_file = work / f"{name}.json"
    for stale in [merged_file, *(work / f"{name}-{b}.json" for b in ("unsloth", "peft"))]:
        stale.unlink(missing_ok=True)
    command = lite_delta("bench", "train", "--student", str(student), "--backend", "both", "--steps", str(steps),
                         "--warmup", str(warmup), "--timeout-s", str(int(clock.left() - 10)), "--out",
                         str(merged_file), *extra)
    command += [x for n in max_lengths for x in ("--max-length", str(n))]
    command += [x for b in batches for x in ("--batch", str(b))]
    run = run_guarded(command, clock.left(), gpu=not dry)
    result = json.loads(merged_file.read_text()) if merged_file.is_file() else {"benchmark": "train", "backends": {},
                                                                                "runs": []}
    for backend in ("unsloth", "peft"):
        part = work / f"{name}-{backend}.json"
        if part.is_file() and not any(r.get("backend") == backend for r in result["runs"]):
            rows = json.loads(part.read_text())
            result["backends"].setdefault(backend, {k: v for k, v in rows.items() if k != "runs"})
            result["runs"] += rows["runs"]
    result.update({"dry_run": dry, "student_shape": student_shape, "command": command[3:],
                   "gpu_memory_peak_mib": run["gpu_memory_peak_mib"], "returncode": run["returncode"],
                   "timed_out": run["timed_out"]})
    if run["returncode"] != 0:
        result["output_tail"] = run["output_tail"]
    write_json(out / f"{name}.json", result)


def step_train(out: Path, work: Path, size: dict, clock: Clock, dry: bool) -> None:
    bench_train(out, work, clock, dry, name="train", student_shape=size["student"], max_lengths=size["max_lengths"],
                batches=size["batches"], steps=size["steps"], warmup=size["warmup"])


def step_fp16(out: Path, work: Path, size: dict, clock: Clock, dry: bool) -> None:
    """The T4 path forced on a bf16 card: fp16 autocast with the gradient scaler over a 4-bit base (a CPU has
    no fp16 GradScaler: the dry run takes the CPU's precision)."""
    f = size["fp16"]
    bench_train(out, work, clock, dry, name="train-fp16", student_shape=f["student"], max_lengths=[f["max_length"]],
                batches=[f["batch"]], steps=f["steps"], warmup=f["warmup"],
                extra=["--precision", f["precision"], "--quantization", "nf4"])


def step_suite(out: Path, work: Path, size: dict, clock: Clock, dry: bool) -> None:
    """A few reduced-suite items through the transformers engine (how a Hub student without a GGUF is scored)."""
    s = size["suite"]
    student = student_folder(work, size["student"], tokenizer_gguf(work, dry))
    folder = work / "suite"
    shutil.rmtree(folder, ignore_errors=True)
    command = lite_delta("eval", "--model", str(student), "--engine", "transformers", "--tasks", s["tasks"],
                         "--limit", str(s["limit"]), "--max-tokens", str(s["max_tokens"]), "--batch-size",
                         str(s["batch_size"]), "--data-dir", str(benchdata(dry)), "--out", str(folder))
    run = run_guarded(command, clock.left(), gpu=not dry)
    record = {"benchmark": "suite", "dry_run": dry, "student_shape": size["student"], "command": command[3:], **run}
    results = folder / "results.json"
    if results.is_file():
        data = json.loads(results.read_text())
        record["engine"] = data.get("engine")
        record["seconds_last_run"] = data.get("seconds_last_run")
        record["tasks"] = {name: {k: v for k, v in task.items() if k in ("score", "n")}
                           for name, task in data.get("tasks", {}).items()}
        items = sum(t["n"] for t in record["tasks"].values())
        if data.get("seconds_last_run"):
            record["items_per_s"] = round(items / data["seconds_last_run"], 3)
    write_json(out / "suite.json", record)


def step_e2e(out: Path, work: Path, size: dict, clock: Clock, dry: bool) -> None:
    tokenizer = tokenizer_gguf(work, dry)
    model = quantized_gguf(work, "e2e", size["e2e_model"], tokenizer, size["e2e_quant"], seed=3)
    runs = work / "runs"
    shutil.rmtree(runs / "demo", ignore_errors=True)
    sets = [*E2E_SETS, f"teachers.samples={model}", f"student={model}"]
    run = run_guarded(lite_delta("run", "--runs-dir", str(runs), *[x for s in sets for x in ("--set", s)]),
                      clock.left(), gpu=not dry)
    record = {"benchmark": "e2e", "recipe": "demo (smoke size, random stand-in model)", "dry_run": dry,
              "overrides": sets, **run}
    manifest = runs / "demo" / "manifest.json"
    if manifest.is_file():
        stages = json.loads(manifest.read_text()).get("stages", {})
        record["stages"] = {name: info.get("status") for name, info in stages.items()}
    train = runs / "demo" / "train" / "train.json"
    if train.is_file():
        summary = json.loads(train.read_text())
        record["train"] = {k: summary.get(k) for k in ("backend", "device", "precision", "steps", "seconds",
                                                       "tokens_per_s_mean", "peak_gpu_gb")}
    write_json(out / "e2e.json", record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=REPO / ".device" / "built" / "work")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all steps together")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--tokenizer-carrier", type=Path, help="write the tokenizer carrier GGUF here and stop")
    args = parser.parse_args()
    if args.tokenizer_carrier:
        write_tokenizer_carrier(args.tokenizer_carrier)
        return
    if args.out is None:
        parser.error("--out is required")
    size = SIZES["dry" if args.dry_run else "gpu"]
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prepare_only:
        prepare(args.work, size, args.dry_run)
        return
    clock = Clock(args.budget)
    env = step_env(args.out, args.dry_run)
    log(f"environment: {env.get('gpu') or env['cpu']}, CUDA {env.get('cuda')}, driver {env.get('driver')}")
    for name in args.steps.split(","):
        budget = size["budget"][name]
        step = clock.step(budget)
        log(f"step {name}: {int(step.left())} s")
        started = time.monotonic()
        try:
            if name == "generate":
                step_generate(args.out, args.work, size, step, env, args.dry_run)
            elif name == "train":
                step_train(args.out, args.work, size, step, args.dry_run)
            elif name == "fp16":
                step_fp16(args.out, args.work, size, step, args.dry_run)
            elif name == "suite":
                step_suite(args.out, args.work, size, step, args.dry_run)
            elif name == "e2e":
                step_e2e(args.out, args.work, size, step, args.dry_run)
        except Exception as exc:  # noqa: BLE001 - one step's failure must not lose the others
            log(f"step {name} failed: {exc!r}")
            append_jsonl(args.out / "errors.jsonl", {"step": name, "error": repr(exc)})
        log(f"step {name}: done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
