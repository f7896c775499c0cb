"""The `lite-delta` command: parse, call one stage function, print. Nothing else lives here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.exceptions import Abort, Exit, TyperException

from lite_delta.errors import LiteDeltaError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Delta learning on one consumer GPU: weak GGUF teachers -> preference pairs -> QLoRA DPO -> eval.",
)
bench_app = typer.Typer(no_args_is_help=True, help="Measure a stage against its peer in the same run.")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)


@app.command()
def run(
    recipe: Optional[Path] = typer.Argument(None, help="recipe YAML; the offline demo when omitted"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="runs are written to RUNS_DIR/NAME"),
    from_stage: Optional[str] = typer.Option(None, "--from", help="rerun from this stage: meter, generate, pair, "
                                             "train, rounds, sft, convert, export, evaluate, report"),
    until_stage: Optional[str] = typer.Option(None, "--until", help="stop after this stage"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (models, sizes, steps, VRAM, ETA) only"),
    overrides: list[str] = typer.Option([], "--set", help="override a recipe field: KEY=VALUE, e.g. train.max_steps=20"),
) -> None:
    """Run a recipe end to end into runs/NAME: (meter ->) generate -> pair -> train -> (rounds ->) (sft ->) (convert ->) export ->
    evaluate -> report.

    Finished stages are skipped, an interrupted one resumes, and a changed setting reruns its stage
    and the ones after it (see runs/NAME/manifest.json)."""
    from lite_delta.pipeline import default_recipe_path, run_recipe

    out = run_recipe(recipe or default_recipe_path(), runs_dir=runs_dir, overrides=overrides,
                     from_stage=from_stage, until_stage=until_stage, dry_run=dry_run)
    if not dry_run:
        report = out / "report.md"
        console.print(f"[green]done[/green]: {report if report.is_file() else out}")


@app.command()
def generate(
    model: Optional[str] = typer.Option(None, help="local .gguf, hf://ORG/REPO/FILE.gguf (globs ok) or pkg://PACKAGE/FILE.gguf"),
    prompts: str = typer.Option(..., help="jsonl/json/parquet/csv file, Hub dataset id, or builtin:NAME"),
    out: Path = typer.Option(..., help="output directory (completions.jsonl); rerun to resume"),
    n: Optional[int] = typer.Option(None, min=1, help="use N prompts (deterministic sample)"),
    max_tokens: int = typer.Option(2048, min=1, help="new tokens per answer"),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    seed: int = typer.Option(0, help="base seed; each prompt/sample gets its own seed from it"),
    parallel: int = typer.Option(16, min=1, help="sequences decoded at once"),
    system: Optional[str] = typer.Option(None, help="system prompt"),
    samples: int = typer.Option(1, min=1, help="answers per prompt (for by_score pairing)"),
    prompt_column: Optional[str] = typer.Option(None, help="column holding the prompt (auto-detected)"),
    split: str = typer.Option("train", help="dataset split for a Hub id"),
    prompt_config: Optional[str] = typer.Option(None, help="the Hub dataset's config name, e.g. main for gsm8k"),
    max_prompt_tokens: int = typer.Option(2046, min=1, help="longer prompts are dropped and counted"),
    stop: Optional[list[str]] = typer.Option(None, help="stop string (repeatable)"),
    engine: str = typer.Option("batched", help="batched | sequential"),
    endpoint: Optional[list[str]] = typer.Option(None, help="OpenAI-compatible server URL instead of --model, e.g. "
                                                 "http://HOST:8080/v1 (repeatable: all used at once)"),
    endpoint_model: Optional[str] = typer.Option(None, help="model name the servers list (default: the one served)"),
    endpoint_name: Optional[str] = typer.Option(None, help="your name for the served teacher (records, identity)"),
    max_in_flight: int = typer.Option(8, min=1, help="requests in flight per endpoint"),
    request_timeout: float = typer.Option(600.0, min=0.001, help="seconds per request"),
    retries: int = typer.Option(5, min=0, help="failures in a row before an endpoint is left out"),
    backoff: float = typer.Option(1.0, min=0.001, help="first wait after a failure, seconds (doubles)"),
    api_key_env: Optional[str] = typer.Option(None, help="environment variable holding the endpoints' API key"),
    derive: Optional[str] = typer.Option(None, help="answer with --model requantized to this llama.cpp quant type "
                                         "(a derived rejected teacher, e.g. Q2_K; made once, cached)"),
) -> None:
    """Answer every prompt with one GGUF model through llama.cpp, or with OpenAI-compatible servers (--endpoint)."""
    from lite_delta.config import GenerateConfig
    from lite_delta.generate import generate as run_generate
    from lite_delta.models.derive import check_derive

    derive = check_derive(derive, "--derive") if derive else None

    cfg = _validated(
        GenerateConfig,
        model=model,
        derive=derive,
        endpoint=dict(endpoints=endpoint, model=endpoint_model, name=endpoint_name, max_in_flight=max_in_flight,
                      timeout=request_timeout, retries=retries, backoff=backoff, api_key_env=api_key_env)
        if endpoint else None,
        out=out,
        prompts=dict(source=prompts, column=prompt_column, split=split, config=prompt_config, n=n,
                     max_prompt_tokens=max_prompt_tokens),
        generation=dict(
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            parallel=parallel,
            system=system,
            samples_per_prompt=samples,
            stop=stop or [],
            engine=engine,
        ),
    )
    path = run_generate(cfg)
    console.print(f"[green]done[/green]: {path / 'completions.jsonl'}")


@app.command()
def pair(
    out: Path = typer.Option(..., help="output directory: pairs.jsonl, stats.json, dataset/"),
    chosen: Optional[Path] = typer.Option(None, help="generate output of the stronger model (by_model)"),
    rejected: Optional[Path] = typer.Option(None, help="generate output of the weaker model (by_model)"),
    samples: Optional[Path] = typer.Option(None, help="generate output with several samples per prompt (by_score)"),
    scorer: str = typer.Option("sections", help="sections | paragraphs | list_items | list_markers | length | module:function"),
    min_margin: float = typer.Option(1.0, min=0.0, help="by_score: smallest score gap kept"),
    pairs_per_prompt: int = typer.Option(1, min=1, help="by_score: up to N disjoint pairs per prompt "
                                                         "(best-worst, 2nd best-2nd worst, ...)"),
    allow_truncated: bool = typer.Option(False, help="keep answers cut by max_tokens"),
    max_length: Optional[int] = typer.Option(2048, min=1, help="prompt+answer tokens per side"),
    relevance_gate: Optional[float] = typer.Option(
        None, "--relevance-gate", min=0.0, help="drop a pair whose chosen answer is less relevant to its prompt than "
        "the rejected one by more than this (nats per token, under --judge)"),
    judge: Optional[str] = typer.Option(None, "--judge", help="the relevance gate's judge: the student, a GGUF "
                                        "(.gguf path, hf://... or pkg://...)"),
    contrast: Optional[str] = typer.Option(
        None, "--contrast", help="add a contrast pair per prompt, its best chosen answer against a degenerate copy: "
        "comma-separated forms of loop, repeat, headings"),
) -> None:
    """Form preference pairs: by model (chosen/rejected dirs) or by a scorer over samples."""
    from lite_delta.pairs import PairConfig, make_pairs

    if (relevance_gate is None) != (judge is None):
        raise LiteDeltaError("--relevance-gate and --judge go together: the gate needs the student's GGUF as judge")

    mode = "by_score" if samples is not None else "by_model"
    cfg = _validated(
        PairConfig,
        mode=mode,
        chosen=chosen,
        rejected=rejected,
        samples=samples,
        scorer=scorer,
        min_margin=min_margin,
        pairs_per_prompt=pairs_per_prompt,
        allow_truncated=allow_truncated,
        max_length=max_length,
        relevance_gate=relevance_gate,
        contrast=[kind.strip() for kind in contrast.split(",") if kind.strip()] if contrast else [],
        out=out,
    )
    relevance = None
    if judge is not None:
        from lite_delta.evaluate.coherence import relevance_judge

        relevance = relevance_judge(judge)
    path = make_pairs(cfg, relevance=relevance)
    console.print(f"[green]done[/green]: {path / 'pairs.jsonl'}")


@app.command()
def train(
    pairs: Optional[str] = typer.Option(None, help="pair-stage output folder, a pairs file (.jsonl/.json/.parquet/"
                                        ".csv), or a Hub dataset ORG/NAME[:CONFIG][@SPLIT] (split train unless "
                                        "named); a local path that exists wins"),
    student: Optional[str] = typer.Option(None, help="Hub id, model folder, or GGUF reference"),
    out: Optional[Path] = typer.Option(None, help="output folder: adapter/, train_log.jsonl, checkpoints/"),
    backend: Optional[str] = typer.Option(None, help="auto | unsloth | peft"),
    quantization: Optional[str] = typer.Option(None, help="auto | nf4 | none: the frozen base (nf4: QLoRA, "
                                               "on the CPU too; auto: nf4 on a GPU and with Unsloth)"),
    loss: Optional[str] = typer.Option(None, help="DPO loss (default sigmoid_norm)"),
    max_steps: Optional[int] = typer.Option(None, help="stop after N optimizer steps"),
    lr: Optional[float] = typer.Option(None, help="learning rate"),
    beta: Optional[float] = typer.Option(None, help="DPO beta (default 5)"),
    config: Optional[Path] = typer.Option(None, help="YAML of training fields (CLI options override it)"),
    resume: bool = typer.Option(False, help="continue from the last checkpoint in OUT"),
    merge: Optional[bool] = typer.Option(None, "--merge", help="also save a 16-bit model with the adapter merged in"),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", help="train in N processes (GPUs) that "
                                                "accelerate launch starts: DDP (global batch x N)"),
    accelerate_config: Optional[str] = typer.Option(None, "--accelerate-config", help="ddp | zero3 | fsdp-qlora "
                                                    "(shipped) or an accelerate config YAML"),
    report_to: Optional[list[str]] = typer.Option(None, "--report-to", help="trackers as transformers names them: "
                                                  "tensorboard (OUT/tensorboard), wandb, trackio, ...; repeatable"),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="the tracker's run name (default: OUT's name)"),
    eval_fraction: Optional[float] = typer.Option(None, "--eval-fraction", help="share of prompts held out of "
                                                  "training and evaluated every --eval-steps (e.g. 0.05)"),
    eval_steps: Optional[int] = typer.Option(None, "--eval-steps", help="evaluate the held-out pairs every N steps "
                                             "(default: 10 times in the run)"),
    select: Optional[str] = typer.Option(None, help="last | best_eval: the adapter kept (best_eval: the lowest "
                                         "held-out loss; needs --eval-fraction)"),
) -> None:
    """DPO the student on preference pairs with LoRA (Unsloth 4-bit on a CUDA GPU, PEFT otherwise)."""
    from lite_delta.config import TrainConfig, load_train_config
    from lite_delta.train.launch import process_rank, run_training

    overrides = dict(pairs=pairs, student=student, out=out, backend=backend, quantization=quantization, loss=loss,
                     max_steps=max_steps, learning_rate=lr, beta=beta, merge=merge, num_processes=num_processes,
                     accelerate_config=accelerate_config, report_to=report_to or None, run_name=run_name,
                     eval_fraction=eval_fraction, eval_steps=eval_steps, select=select)
    if config is not None:
        cfg = load_train_config(config, **overrides)
    else:
        cfg = _validated(TrainConfig, **{k: v for k, v in overrides.items() if v is not None})
    path = run_training(cfg, resume=resume)
    if process_rank() == 0:  # under `accelerate launch -m lite_delta train`, said once
        console.print(f"[green]done[/green]: {path / 'adapter'}")


@app.command("convert")
def convert_(
    model: str = typer.Argument(..., help="transformers model: a Hub id (ORG/NAME) or a local model folder"),
    out: Path = typer.Option(..., help="the GGUF to write, e.g. qwen2.5-3b-instruct-bf16.gguf"),
    dtype: str = typer.Option("auto", help="auto (the checkpoint's own 16-bit type), f16, bf16 or f32"),
    quant: Optional[str] = typer.Option(None, help="also write OUT quantized by llama.cpp (Q4_K_M, Q8_0, ...) "
                                        "beside it"),
) -> None:
    """Convert a transformers model (llama, qwen2, qwen3) to a GGUF that llama.cpp, Ollama and LM Studio run."""
    from lite_delta.models.hf_gguf import DTYPES, convert_hf_to_gguf, local_model_folder
    from lite_delta.models.merge_gguf import check_quant, quantize_gguf

    if dtype not in DTYPES:
        raise LiteDeltaError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    quant = check_quant(quant) if quant else None
    if out.suffix.lower() != ".gguf":
        raise LiteDeltaError(f"--out {out}: name the file to write, ending in .gguf")
    path = convert_hf_to_gguf(local_model_folder(model), out, dtype=dtype, name=model.strip("/").split("/")[-1])
    console.print(f"[green]wrote[/green] {path} ({path.stat().st_size / 2**30:.2f} GiB)")
    if quant:
        quantized = quantize_gguf(path, path.with_name(f"{path.stem}-{quant}.gguf"), quant)
        console.print(f"[green]wrote[/green] {quantized} ({quantized.stat().st_size / 2**30:.2f} GiB)")


@app.command("export")
def export_(
    adapter: Path = typer.Option(..., help="PEFT LoRA adapter folder (the adapter/ that `lite-delta train` wrote)"),
    base: str = typer.Option(..., help="GGUF of the model the adapter was trained on: path, hf://..., pkg://..."),
    out: Path = typer.Option(..., help="output folder: adapter.gguf, merged-*.gguf, Modelfile, README.md"),
    quant: str = typer.Option("Q4_K_M", help="llama.cpp quant of the merged model (Q4_K_M, Q5_K_M, Q8_0, ...)"),
    merge: bool = typer.Option(True, "--merge/--no-merge", help="also write the merged model (F16, then QUANT)"),
    prompt: Optional[str] = typer.Option(None, help="prompt that base and tuned answer as a check ('' to skip)"),
) -> None:
    """Export a LoRA adapter for llama.cpp and Ollama: GGUF adapter, merged GGUF, Modelfile and commands."""
    from lite_delta.models.export import DEFAULT_PROMPT, export

    result = export(adapter, base, out, quant=quant, merge=merge, prompt=DEFAULT_PROMPT if prompt is None else prompt)
    for label in ("base", "tuned", "merged"):
        if result["sample"] and label in result["sample"]:
            print(f"--- {label}:\n{result['sample'][label].strip()}")
    console.print(f"[green]done[/green]: {result['readme']}")


@app.command()
def plan(
    student: str = typer.Option(..., help="Hub id, folder with config.json, or GGUF reference (no weights read)"),
    gpu_mem: list[float] = typer.Option([], "--gpu-mem", help="GPU memory in GB (repeatable; default: 12, 16, 24)"),
    max_length: int = typer.Option(2048, min=16, help="longest prompt + answer to plan for"),
    global_batch: int = typer.Option(8, min=1, help="pairs per optimizer step (batch x gradient accumulation)"),
    lora_r: int = typer.Option(16, min=1, help="LoRA rank"),
    backend: str = typer.Option("peft", help="peft | unsloth (its checkpoints wait in CPU memory: what backend "
                                "auto picks on a GPU with the `gpu` extra)"),
    answer_share: float = typer.Option(0.5, min=0.01, max=1.0, help="answers' share of the tokens (TRL projects "
                                       "only those onto the vocabulary); prompts take up to half of max_length"),
    json_out: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Estimate peak VRAM of a QLoRA DPO step from the model's config and print settings that fit."""
    import json

    from lite_delta.train.plan import PRESETS_GB, plan as make_plan, print_plan

    result = make_plan(student, list(gpu_mem) or list(PRESETS_GB), max_length=max_length,
                       global_batch=global_batch, lora_r=lora_r, backend=backend, answer_share=answer_share)
    if json_out:
        print(json.dumps(result, indent=2))
    else:
        print_plan(result, Console())


@app.command()
def doctor(
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where runs are written (for the disk check)"),
) -> None:
    """Check this machine: Python, torch/CUDA, GPU, llama.cpp build, bitsandbytes, Unsloth, pins, disk, Hub."""
    from lite_delta.doctor import doctor as run_doctor
    from lite_delta.doctor import print_checks

    checks, code = run_doctor(runs_dir)
    print_checks(checks, Console())
    raise typer.Exit(code)


@bench_app.command("generate")
def bench_generate(
    model: str = typer.Option(..., help="GGUF model reference"),
    parallel: int = typer.Option(32, min=1, help="slots of the batched engine (and of llama-server)"),
    prompts: int = typer.Option(64, min=1, help="number of prompts (built-in demo set, cycled)"),
    max_tokens: Optional[int] = typer.Option(
        None, min=1, help="new tokens per answer (default: 64 fixed, end tokens ignored; 200 by_score)"),
    out: Optional[Path] = typer.Option(None, help="write the figures as JSON here"),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (default: all cores)"),
    workload: str = typer.Option("fixed", help="fixed (greedy, fixed length) | by_score (k samples at T 0.9, stop on EOS)"),
    samples: int = typer.Option(4, min=1, help="by_score: samples per prompt"),
    variant: Optional[list[str]] = typer.Option(
        None, help="also run the batched engine with other levers (repeatable; + combines): share_prompts=0|1 "
        "(default on), live_rows[=0|1] (default off), device_sampling[=0|1] (default off), extra_buffers=0|1 (the "
        "model reloaded so)"),
    device_sampling: bool = typer.Option(
        False, "--device-sampling", help="also run the batched engine sampling on the device (llama.cpp's backend "
        "sampling; = --variant device_sampling): device_over_host in the JSON"),
    sequential: bool = typer.Option(True, "--sequential/--no-sequential", help="run the one-at-a-time loop too"),
    peer: Optional[str] = typer.Option(None, help="llama-server: also run llama.cpp's own server, N slots, N clients"),
    server_bin: Optional[Path] = typer.Option(None, help="the llama-server binary (benchmarks/llama_server/build.sh)"),
) -> None:
    """Batched engine vs the sequential one-prompt-at-a-time loop (and llama-server), same prompts, one run."""
    from lite_delta.bench import bench_generate as run_bench

    result = run_bench(model, parallel=parallel, n_prompts=prompts, max_tokens=max_tokens, n_threads=threads, out=out,
                       workload=workload, samples=samples, sequential=sequential, peer=peer, server_bin=server_bin,
                       variants=[*(variant or ()), *(["device_sampling"] if device_sampling else [])])
    rates = " | ".join(f"{name} {r['tok_s']:.1f} tok/s" for name, r in result["runs"].items())
    ratios = ", ".join(f"{result['batched_over'][name]:.2f}x over {name}" for name in result["batched_over"])
    print(f"{result['workload']}: {rates}")
    print(f"batched: {ratios}; identical to batched: {result['identical_to_batched']} of {result['sequences']}  "
          f"({result['slots']} slots, {result['n_threads']} threads, {result['device']})")
    if "speedup" in result:
        print(f"speedup {result['speedup']:.2f}x (batched over sequential)")
    if "device_over_host" in result:
        print(f"device sampling {result['device_over_host']:.2f}x host sampling's tok/s")


@bench_app.command("train")
def bench_train(
    student: str = typer.Option(..., help="Hub id, model folder, or GGUF reference"),
    max_length: list[int] = typer.Option(..., "--max-length", min=16, help="tokens per side of each pair (repeatable)"),
    batch: list[int] = typer.Option([1], "--batch", min=1, help="pairs per step (repeatable)"),
    backend: str = typer.Option("auto", help="auto | unsloth | peft | both (each in its own process)"),
    steps: int = typer.Option(3, min=1, help="timed DPO steps per setting"),
    warmup: int = typer.Option(1, min=0, help="untimed steps first"),
    lora_r: int = typer.Option(16, "--lora-r", min=1, help="LoRA rank"),
    precompute_ref: bool = typer.Option(False, "--precompute-ref", help="reference log-probs once, up front"),
    precision: str = typer.Option("auto", help="auto | bf16 | fp16 | fp32 (fp16 on a bf16 card: the T4 path)"),
    quantization: str = typer.Option("auto", help="auto | nf4 | none: the frozen base (auto: nf4 on a GPU and "
                                     "with Unsloth; nf4 runs on the CPU too)"),
    out: Optional[Path] = typer.Option(None, help="write the figures as JSON here (after every setting)"),
    timeout_s: Optional[float] = typer.Option(None, "--timeout-s", min=1, help="--backend both: seconds for both "
                                              "(split between the backends still to run)"),
    report_to: list[str] = typer.Option(["none"], "--report-to", help="trackers as transformers names them "
                                        "(tensorboard: beside --out, in tensorboard/RUN-NAME-SETTING); repeatable"),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="the tracker's run name (default bench-train)"),
) -> None:
    """K DPO steps on exact-length synthetic pairs: tokens/s, s/step, peak GPU memory vs the planner."""
    from lite_delta.train.bench import bench_train as run_bench, summary_lines

    if backend not in ("auto", "unsloth", "peft", "both"):
        raise LiteDeltaError(f"--backend must be auto, unsloth, peft or both, not {backend!r}")
    for option, value, allowed in (("--precision", precision, ("auto", "bf16", "fp16", "fp32")),
                                   ("--quantization", quantization, ("auto", "nf4", "none"))):
        if value not in allowed:
            raise LiteDeltaError(f"{option} must be {', '.join(allowed[:-1])} or {allowed[-1]}, not {value!r}")
    result = run_bench(student, max_lengths=list(max_length), batches=list(batch), backend=backend, steps=steps,
                       warmup=warmup, lora_r=lora_r, precompute_ref_log_probs=precompute_ref, precision=precision,
                       quantization=quantization, out=out, timeout_s=timeout_s, report_to=list(report_to),
                       run_name=run_name)
    for line in summary_lines(result):
        print(line)


@app.command("eval")
def eval_(
    model: str = typer.Option(..., help="GGUF reference (llama.cpp), Hub id or model folder (transformers)"),
    out: Path = typer.Option(..., help="output folder: results.json, <task>/predictions.jsonl; rerun to resume"),
    tasks: str = typer.Option("gsm8k,math500,mmlu,ifeval,bbh,truthfulqa,humaneval,drop,popqa",
                              help="comma-separated tasks"),
    adapter: Optional[Path] = typer.Option(None, help="LoRA adapter: a PEFT folder (both engines; exported to GGUF for llama.cpp) or a GGUF adapter (llama.cpp)"),
    engine: str = typer.Option("auto", help="auto | llama.cpp | transformers (auto: llama.cpp for a GGUF model, with or without an adapter)"),
    limit: Optional[int] = typer.Option(None, min=1, help="items per task (reduced subset)"),
    subset: str = typer.Option("stratified", help="stratified (by subject/config) | first"),
    seed: int = typer.Option(0, help="subset and sampling seed"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="local copies (DIR/<task>/...) instead of the Hub"),
    max_tokens: Optional[int] = typer.Option(None, min=1, help="cap every task's generation budget"),
    humaneval_samples: int = typer.Option(20, min=1, help="HumanEval samples per problem (pass@10 needs 10+)"),
    parallel: int = typer.Option(8, min=1, help="llama.cpp sequences decoded at once"),
    batch_size: int = typer.Option(8, min=1, help="transformers generation batch"),
    precision: str = typer.Option("auto", help="transformers compute dtype: auto | bf16 | fp16 | fp32 (auto: bf16 "
                                  "from compute 8.0, fp16 on a T4, fp32 on the CPU)"),
    quantization: str = typer.Option("auto", help="transformers base weights: auto | nf4 | none (auto: nf4 on a "
                                     "CUDA GPU, the base a QLoRA adapter was trained on; none on the CPU)"),
    model_cache: Optional[Path] = typer.Option(None, help="transformers: where a GGUF is converted (default OUT/model)"),
    threads: Optional[int] = typer.Option(None, min=1, help="llama.cpp CPU threads (default: all cores)"),
) -> None:
    """Score a model on the reduced Tulu 3 suite (resumable)."""
    from lite_delta.evaluate import EvalConfig, evaluate
    from lite_delta.evaluate.stage import parse_tasks

    if subset not in ("stratified", "first"):
        raise LiteDeltaError(f"--subset must be stratified or first, not {subset!r}")
    for option, value, allowed in (("--precision", precision, ("auto", "bf16", "fp16", "fp32")),
                                   ("--quantization", quantization, ("auto", "nf4", "none"))):
        if value not in allowed:
            raise LiteDeltaError(f"{option} must be {', '.join(allowed[:-1])} or {allowed[-1]}, not {value!r}")
    cfg = EvalConfig(model=model, out=out, tasks=parse_tasks(tasks), adapter=adapter, engine=engine, limit=limit,
                     subset=subset, seed=seed, data_dir=data_dir, max_tokens=max_tokens,
                     humaneval_samples=humaneval_samples, parallel=parallel, batch_size=batch_size,
                     precision=precision, quantization=quantization, model_cache=model_cache, threads=threads)
    results = evaluate(cfg)
    for name in cfg.tasks:
        r = results["tasks"][name]
        print(f"{name:<11} {100 * r['score']:6.1f}  (n={r['n']}, {r.get('primary') or r['settings']['metric']})")
    print(f"{'macro avg':<11} {100 * results['macro_average']['score']:6.1f}")
    console.print(f"[green]done[/green]: {out / 'results.json'}")


@app.command()
def score(
    task: str = typer.Option(..., help="task name, e.g. gsm8k"),
    predictions: Path = typer.Option(..., help='JSONL: {"id": row index in the eval split, "output": ...} per line'),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="local copies (DIR/<task>/...) instead of the Hub"),
    out: Optional[Path] = typer.Option(None, help="where scored.jsonl and score.json go (default: beside FILE)"),
) -> None:
    """Score a file of model outputs for one task; prints the metric."""
    from lite_delta.evaluate import score_file

    summary = score_file(task, predictions, data_dir=data_dir, out=out)
    print(f"{summary['task']}: {100 * summary['score']:.1f} ({summary.get('primary') or summary['metric']}, n={summary['n']})")
    if summary.get("excluded"):
        print(f"left out {summary['excluded']} predictions: {'; '.join(summary['excluded_reasons'])}")
    console.print(f"[green]done[/green]: {summary['out']}")


@app.command("compare")
def compare_(
    base_dir: Path = typer.Argument(..., help="eval output of the base model"),
    tuned_dir: Path = typer.Argument(..., help="eval output of the tuned model"),
    out: Path = typer.Option(..., help="output folder: compare.md, compare.json, compare.png"),
) -> None:
    """Base vs tuned per task: difference, paired bootstrap 95% CI, macro average, table and chart."""
    from lite_delta.evaluate import compare as run_compare

    run_compare(base_dir, tuned_dir, out)
    print((out / "compare.md").read_text(encoding="utf-8"), end="")
    console.print(f"[green]done[/green]: {out / 'compare.md'}")


@app.command("meter")
def meter_(
    chosen: Optional[str] = typer.Option(None, help="the stronger teacher: .gguf, hf://ORG/REPO/FILE.gguf or pkg://..."),
    rejected: Optional[str] = typer.Option(None, help="the weaker teacher (or --derive)"),
    derive: Optional[str] = typer.Option(None, help="rejected = the chosen GGUF requantized to this llama.cpp quant "
                                         "type, e.g. Q2_K (lossy from a quantized file; F16/BF16 is cleaner)"),
    recipe: Optional[Path] = typer.Option(None, help="teachers, generation settings, prompts and scorer from a recipe"),
    tasks: Optional[str] = typer.Option(None, help="comma-separated: gsm8k, ifeval, scorer (default gsm8k,ifeval)"),
    limit: Optional[int] = typer.Option(None, min=1, help="items per task (default 100)"),
    out: Path = typer.Option(Path("meter"), help="output folder: meter.json, meter.md, answers-*.jsonl"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="DIR/gsm8k/train.jsonl (or a .jsonl file) "
                                            "instead of the Hub's GSM8K train split"),
    eval_data_dir: Optional[Path] = typer.Option(None, "--eval-data-dir", help="the suite's local copies "
                                                 "(DIR/gsm8k/test.jsonl, DIR/ifeval/train.jsonl) to keep clear of"),
    max_tokens: Optional[int] = typer.Option(None, min=1, help="new tokens per answer (default: the recipe's)"),
    parallel: Optional[int] = typer.Option(None, min=1, help="sequences decoded at once"),
    threads: Optional[int] = typer.Option(None, min=1, help="llama.cpp CPU threads (default: all cores)"),
    prompts: Optional[str] = typer.Option(None, help="prompts of the scorer task (jsonl/json/parquet, Hub id, builtin:NAME)"),
    scorer: Optional[str] = typer.Option(None, help="scorer task's scorer: sections | paragraphs | list_items | list_markers | length"),
    min_delta: Optional[float] = typer.Option(None, min=0.0, help="smallest accuracy delta called clear (0.05)"),
    seed: Optional[int] = typer.Option(None, help="item sample and bootstrap seed"),
) -> None:
    """Measure the teachers' delta before generating: scores, paired-bootstrap CI, tokens/s, verdict."""
    from lite_delta.config import MeterConfig, load_recipe
    from lite_delta.meter import meter as run_meter
    from lite_delta.models.derive import check_derive
    from lite_delta.pipeline import meter_config

    if rejected and derive:
        raise LiteDeltaError("give --rejected or --derive, not both")
    fields = meter_config(load_recipe(recipe), Path(".")).model_dump(exclude={"out"}) if recipe else {}
    flags = dict(chosen=chosen, rejected=rejected or ({"derive": check_derive(derive, "--derive")} if derive else None),
                 tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None, limit=limit, data_dir=data_dir,
                 eval_data_dir=eval_data_dir, max_tokens=max_tokens, scorer=scorer, min_delta=min_delta, seed=seed,
                 prompts=dict(source=prompts, n=limit or 100, sample="first") if prompts else None)
    fields.update({k: v for k, v in flags.items() if v is not None}, out=out)
    if chosen or rejected or derive:
        fields.pop("samples", None)
    for key, value in (("parallel", parallel), ("n_threads", threads)):
        if value:
            fields["generation"] = {**fields.get("generation", {}), key: value}
    result = run_meter(_validated(MeterConfig, **fields))
    print((out / "meter.md").read_text(encoding="utf-8"), end="")
    console.print(f"[green]done[/green]: {out / 'meter.json'} ({result['overall']['verdict'].replace('_', ' ')})")


@app.command("push")
def push_(
    run_dir: Path = typer.Argument(..., help="a finished run folder, runs/NAME"),
    repo: str = typer.Option(..., help="USER/NAME: the adapter's repo; the others are NAME-GGUF, NAME-merged, "
                             "NAME-pairs (a dataset)"),
    parts: Optional[str] = typer.Option(None, help="comma-separated: adapter, gguf, merged, pairs (default: every "
                                        "part the run has)"),
    private: bool = typer.Option(False, "--private", help="create the repos private"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print which file goes to which repo and path, and the "
                                 "cards; upload nothing"),
) -> None:
    """Push a finished run to the Hugging Face Hub: adapter, GGUFs, merged model and pairs, each with a card."""
    from lite_delta.share import parse_parts, plan_lines, push

    plan, urls = push(run_dir, repo, parts=parse_parts(parts), private=private, dry_run=dry_run)
    print("\n".join(plan_lines(plan, cards=dry_run)))
    for url in urls:
        console.print(f"[green]pushed[/green]: {url}")


def _validated(model_cls, **fields):
    from pydantic import ValidationError

    from lite_delta.config import format_validation_error

    try:
        return model_cls.model_validate(fields)
    except ValidationError as exc:
        raise LiteDeltaError(format_validation_error(exc, "options")) from None


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        rc = app(args=argv, standalone_mode=False)  # typer returns exit codes here (130 for Ctrl-C)
        if rc == 130:
            raise KeyboardInterrupt
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Abort):
        console.print("[yellow]interrupted[/yellow]: finished work is saved; rerun the same command to resume")
        sys.exit(130)
    except LiteDeltaError as exc:
        console.print(f"[red]error[/red]: {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except TyperException as exc:  # usage errors, raised by typer's own copy of click
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    main()
