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
    from_stage: Optional[str] = typer.Option(None, "--from", help="rerun from this stage: generate, pair, train, "
                                             "export, evaluate, report"),
    until_stage: Optional[str] = typer.Option(None, "--until", help="stop after this stage"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (models, sizes, steps, VRAM, ETA) only"),
    overrides: list[str] = typer.Option([], "--set", help="override a recipe field: KEY=VALUE, e.g. train.max_steps=20"),
) -> None:
    """Run a recipe end to end into runs/NAME: generate -> pair -> train -> export -> evaluate -> report.

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
    model: str = typer.Option(..., help="local .gguf, hf://ORG/REPO/FILE.gguf (globs ok) or pkg://PACKAGE/FILE.gguf"),
    prompts: str = typer.Option(..., help="jsonl/json/parquet file, Hub dataset id, or builtin:NAME"),
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
    max_prompt_tokens: int = typer.Option(2046, min=1, help="longer prompts are dropped and counted"),
    stop: Optional[list[str]] = typer.Option(None, help="stop string (repeatable)"),
    engine: str = typer.Option("batched", help="batched | sequential"),
) -> None:
    """Answer every prompt with one GGUF model through llama.cpp."""
    from lite_delta.config import GenerateConfig
    from lite_delta.generate import generate as run_generate

    cfg = _validated(
        GenerateConfig,
        model=model,
        out=out,
        prompts=dict(source=prompts, column=prompt_column, split=split, n=n, max_prompt_tokens=max_prompt_tokens),
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
    scorer: str = typer.Option("sections", help="sections | paragraphs | list_items | length | module:function"),
    min_margin: float = typer.Option(1.0, min=0.0, help="by_score: smallest score gap kept"),
    allow_truncated: bool = typer.Option(False, help="keep answers cut by max_tokens"),
    max_length: Optional[int] = typer.Option(2048, min=1, help="prompt+answer tokens per side"),
) -> None:
    """Form preference pairs: by model (chosen/rejected dirs) or by a scorer over samples."""
    from lite_delta.pairs import PairConfig, make_pairs

    mode = "by_score" if samples is not None else "by_model"
    cfg = _validated(
        PairConfig,
        mode=mode,
        chosen=chosen,
        rejected=rejected,
        samples=samples,
        scorer=scorer,
        min_margin=min_margin,
        allow_truncated=allow_truncated,
        max_length=max_length,
        out=out,
    )
    path = make_pairs(cfg)
    console.print(f"[green]done[/green]: {path / 'pairs.jsonl'}")


@app.command()
def train(
    pairs: Optional[Path] = typer.Option(None, help="pair-stage output folder or pairs.jsonl"),
    student: Optional[str] = typer.Option(None, help="Hub id, model folder, or GGUF reference"),
    out: Optional[Path] = typer.Option(None, help="output folder: adapter/, train_log.jsonl, checkpoints/"),
    backend: Optional[str] = typer.Option(None, help="auto | unsloth | peft"),
    loss: Optional[str] = typer.Option(None, help="DPO loss (default sigmoid_norm)"),
    max_steps: Optional[int] = typer.Option(None, help="stop after N optimizer steps"),
    lr: Optional[float] = typer.Option(None, help="learning rate"),
    beta: Optional[float] = typer.Option(None, help="DPO beta (default 5)"),
    config: Optional[Path] = typer.Option(None, help="YAML of training fields (CLI options override it)"),
    resume: bool = typer.Option(False, help="continue from the last checkpoint in OUT"),
    merge: Optional[bool] = typer.Option(None, "--merge", help="also save a 16-bit model with the adapter merged in"),
) -> None:
    """DPO the student on preference pairs with LoRA (Unsloth 4-bit on a CUDA GPU, PEFT otherwise)."""
    from lite_delta.config import TrainConfig, load_train_config
    from lite_delta.train.stage import train as run_train

    overrides = dict(pairs=pairs, student=student, out=out, backend=backend, loss=loss, max_steps=max_steps,
                     learning_rate=lr, beta=beta, merge=merge)
    if config is not None:
        cfg = load_train_config(config, **overrides)
    else:
        cfg = _validated(TrainConfig, **{k: v for k, v in overrides.items() if v is not None})
    path = run_train(cfg, resume=resume)
    console.print(f"[green]done[/green]: {path / 'adapter'}")


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
    json_out: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Estimate peak VRAM of a QLoRA DPO step from the model's config and print settings that fit."""
    import json

    from lite_delta.train.plan import PRESETS_GB, plan as make_plan, print_plan

    result = make_plan(student, list(gpu_mem) or list(PRESETS_GB), max_length=max_length,
                       global_batch=global_batch, lora_r=lora_r)
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
    parallel: int = typer.Option(32, min=1, help="slots of the batched engine"),
    prompts: int = typer.Option(64, min=1, help="number of prompts (built-in demo set, cycled)"),
    max_tokens: int = typer.Option(64, min=1, help="new tokens per prompt (fixed: end tokens ignored)"),
    out: Optional[Path] = typer.Option(None, help="write the figures as JSON here"),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (default: all cores)"),
) -> None:
    """Batched engine vs the sequential one-prompt-at-a-time loop, same prompts, one run."""
    from lite_delta.bench import bench_generate as run_bench

    result = run_bench(model, parallel=parallel, n_prompts=prompts, max_tokens=max_tokens, n_threads=threads, out=out)
    print(
        f"batched {result['batched_tok_s']:.1f} tok/s | sequential {result['sequential_tok_s']:.1f} tok/s | "
        f"speedup {result['speedup']:.2f}x  ({result['slots']} slots, {result['n_threads']} threads, {result['device']})"
    )


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
    out: Optional[Path] = typer.Option(None, help="write the figures as JSON here (after every setting)"),
    timeout_s: Optional[float] = typer.Option(None, "--timeout-s", min=1, help="--backend both: seconds for both "
                                              "(split between the backends still to run)"),
) -> None:
    """K DPO steps on exact-length synthetic pairs: tokens/s, s/step, peak GPU memory vs the planner."""
    from lite_delta.train.bench import bench_train as run_bench, summary_lines

    if backend not in ("auto", "unsloth", "peft", "both"):
        raise LiteDeltaError(f"--backend must be auto, unsloth, peft or both, not {backend!r}")
    result = run_bench(student, max_lengths=list(max_length), batches=list(batch), backend=backend, steps=steps,
                       warmup=warmup, lora_r=lora_r, precompute_ref_log_probs=precompute_ref, out=out,
                       timeout_s=timeout_s)
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
    model_cache: Optional[Path] = typer.Option(None, help="transformers: where a GGUF is converted (default OUT/model)"),
    threads: Optional[int] = typer.Option(None, min=1, help="llama.cpp CPU threads (default: all cores)"),
) -> None:
    """Score a model on the reduced Tulu 3 suite (resumable)."""
    from lite_delta.evaluate import EvalConfig, evaluate
    from lite_delta.evaluate.stage import parse_tasks

    if subset not in ("stratified", "first"):
        raise LiteDeltaError(f"--subset must be stratified or first, not {subset!r}")
    cfg = EvalConfig(model=model, out=out, tasks=parse_tasks(tasks), adapter=adapter, engine=engine, limit=limit,
                     subset=subset, seed=seed, data_dir=data_dir, max_tokens=max_tokens,
                     humaneval_samples=humaneval_samples, parallel=parallel, batch_size=batch_size,
                     model_cache=model_cache, threads=threads)
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
