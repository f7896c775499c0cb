"""`lite-delta run --dry-run`: what a run would do, without downloading or loading anything.

Models: their size from the local cache, or from the Hub's file listing when it is reachable (a
quick socket check first, so an offline machine answers at once). Prompts: counted when local.
Training steps from the pair count's upper bound, VRAM from the planner, and a rough ETA from
throughputs measured on this project's reference machines — or "not measured" where there are none.
"""

from __future__ import annotations

import fnmatch
import math
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lite_delta.config import DerivedTeacher, EndpointTeacher, Recipe
from lite_delta.errors import LiteDeltaError

GIB = 1024**3
# Bits per weight of the llama.cpp quants an evaluation copy is likely made in (block scales included).
# The shipped GPU recipes' students as their published config.json describes them (architecture, parameters):
# an offline dry run sizes their conversion before anything is in the cache.
PUBLISHED_STUDENTS = {"Qwen/Qwen2.5-3B-Instruct": ("qwen2", 3.09e9), "allenai/Llama-3.1-Tulu-3-8B-SFT": ("llama", 8.03e9)}
QUANT_BITS = {"Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K_M": 5.69, "Q5_0": 5.5, "Q4_K_M": 4.89, "Q4_0": 4.5}
# Measured: SmolLM2-135M Q4_1, batched llama.cpp on a 2-core CPU (README, Performance); scaled by size.
CPU_GEN_TOK_S_135M = 130.0
# Measured: LoRA DPO of SmolLM2-135M in fp32 on 2 CPU cores, ~250-token pairs: ~3.3 s per pair.
CPU_TRAIN_S_PER_PAIR_135M = 3.3


def hub_online() -> bool:
    """Reachable and not switched off with HF_HUB_OFFLINE (a quick socket check, no Hub retries)."""
    from lite_delta.doctor import hub_reachable

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    return hub_reachable(timeout=2.0)


def describe_model(ref: str, online: bool) -> tuple[str, float | None]:
    """(where it is, size in GiB or None) for a GGUF reference or a Hub model id — never downloads."""
    from lite_delta.models.refs import resolve_model

    if isinstance(ref, EndpointTeacher):  # served elsewhere: nothing here to size
        return f"endpoint ({', '.join(ref.endpoints)})", None
    if isinstance(ref, DerivedTeacher):
        return f"derived from the chosen teacher ({ref.derive}; made once, cached)", None
    if ref.startswith("hf://"):
        parts = ref.removeprefix("hf://").split("/")
        repo, pattern = f"{parts[0]}/{parts[1].partition('@')[0]}", "/".join(parts[2:])
        return _hub_files(repo, lambda f: fnmatch.fnmatch(f.lower(), pattern.lower()), online)
    if ref.startswith("pkg://") or ref.lower().endswith(".gguf") or Path(ref).exists():
        try:
            path = resolve_model(ref) if not Path(ref).is_dir() else Path(ref)
        except LiteDeltaError as exc:
            return f"missing: {exc}", None
        size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
        return f"local ({path.name})", size / GIB
    return _hub_files(ref, lambda f: f.endswith(".safetensors"), online)


def _hub_files(repo: str, wanted, online: bool) -> tuple[str, float | None]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo, local_files_only=True))
    except LocalEntryNotFoundError as exc:
        folder = Path(exc.snapshot_path) if getattr(exc, "snapshot_path", None) else None
    if folder is not None:
        files = [p for p in folder.rglob("*") if p.is_file() and wanted(p.relative_to(folder).as_posix())]
        if files:
            return "cached", sum(p.stat().st_size for p in files) / GIB
    if not online:
        return "to download; size unknown offline", None
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo, files_metadata=True, timeout=10)
        size = sum(s.size or 0 for s in info.siblings if wanted(s.rfilename))
        return "to download", size / GIB
    except Exception as exc:  # noqa: BLE001 — a plan never fails on a Hub hiccup
        return f"to download; size unknown ({type(exc).__name__})", None


def count_prompts(recipe: Recipe) -> tuple[int | None, str]:
    p = recipe.prompts
    if p.source.startswith("builtin:") or Path(p.source).is_file():
        from lite_delta.prompts import load_prompts

        prompts, _ = load_prompts(p.source, column=p.column, split=p.split, config=p.config, n=p.n, sample=p.sample, seed=p.seed)
        return len(prompts), "counted"
    return p.n, "from prompts.n (Hub dataset, not read in a dry run)" if p.n else "all rows of a Hub dataset"


def count_pairs(ref: str) -> tuple[int | None, str]:
    """`train.pairs`: a local pairs file is counted; a dataset (Hub id or Hub-layout folder) is not read."""
    from lite_delta.train.pairs_io import load_pairs, pairs_location

    if isinstance(pairs_location(ref), Path):
        return len(load_pairs(ref)), "counted"
    return None, "a dataset, not read in a dry run"


def student_shapes(ref: str, online: bool):
    """The planner's shapes; offline, a Hub id is read from the cache only (None when not cached)."""
    from lite_delta.train.plan import load_shapes

    try:
        return load_shapes(ref, local_only=not online)
    except LiteDeltaError:
        if online:
            raise
        return None


def _local_shapes(ref: str):
    """Shapes of a GGUF already on disk (None for one still to download)."""
    from lite_delta.train.plan import load_shapes

    if isinstance(ref, EndpointTeacher) or ref.startswith("hf://"):
        return None
    try:
        return load_shapes(ref)
    except LiteDeltaError:
        return None


def meter_throughputs(recipe: Recipe, run_dir: Path) -> dict[str, float]:
    """{teacher role: tokens/s} from a finished meter of these teachers in the run directory (else {})."""
    import json

    try:
        teachers = json.loads((run_dir / "meter" / "meter.json").read_text(encoding="utf-8"))["teachers"]
    except (OSError, ValueError, KeyError):
        return {}
    t = recipe.teachers
    rejected = f"{t.chosen} requantized to {t.rejected.derive}" if isinstance(t.rejected, DerivedTeacher) else t.rejected
    wanted = {"samples": t.samples} if recipe.pairing.mode == "by_score" else {"chosen": t.chosen, "rejected": rejected}
    found = {role: teachers.get(role, {}).get("tokens_per_s") for role in wanted}
    if any(teachers.get(role, {}).get("ref") != ref or not found[role] for role, ref in wanted.items()):
        return {}
    return found


def print_plan(recipe: Recipe, plans, run_dir: Path, console: Console | None = None) -> dict:
    import torch

    console = console or Console()
    online = hub_online()
    cuda = torch.cuda.is_available()
    facts: dict = {"run_dir": str(run_dir), "hub": "reachable" if online else "offline"}
    console.print(f"[bold]Plan for {recipe.name}[/bold] → {run_dir}  (Hub {facts['hub']}; nothing is downloaded)")

    stages = Table("stage", "action", "why")
    for p in plans:
        stages.add_row(p.name, p.action, p.reason)
    console.print(stages)

    t = recipe.teachers
    own_pairs = recipe.train.pairs if recipe.train else None  # no teacher answers anything
    models = [] if own_pairs else [("chosen teacher", t.chosen), ("rejected teacher", t.rejected),
                                   ("sampled teacher", t.samples)]
    models.append(("student", recipe.student))
    table = Table("model", "reference", "where", "size")
    sizes = {}
    for role, ref in models:
        if ref:
            where, size = describe_model(ref, online)
            sizes[role] = size
            table.add_row(role, str(ref), where, f"{size:.2f} GiB" if size is not None else "?")
    console.print(table)

    facts["convert"] = print_conversion(recipe, console)

    g = recipe.generation
    if own_pairs:
        from lite_delta.train.pairs_io import pairs_source

        n, how = count_pairs(own_pairs)
        answers = 0
        console.print(f"pairs: {pairs_source(own_pairs)} (train.pairs; meter, generate and pair left out): "
                      f"{n if n is not None else '?'} ({how})")
        facts.update(prompts=None, answers=0, pairs=n, pairs_source=str(pairs_source(own_pairs)))
    else:
        n, how = count_prompts(recipe)
        teachers = 2 if recipe.pairing.mode == "by_model" else 1
        answers = (n or 0) * g.samples_per_prompt * teachers
        console.print(f"prompts: {n if n is not None else '?'} ({how}); answers to generate: {answers or '?'} "
                      f"of up to {g.max_tokens} tokens")
        facts.update(prompts=n, answers=answers)
        if recipe.pairing.relevance_gate is not None:
            console.print(f"pairing: relevance gate {recipe.pairing.relevance_gate}: the student "
                          f"({recipe.student_gguf_ref()}) judges both answers of every pair before it is kept")
        if recipe.pairing.contrast:
            console.print(f"pairing: one contrast pair per prompt ({', '.join(recipe.pairing.contrast)}): its best "
                          "chosen answer against a broken copy of itself; training health's reward rules are off")

    eta = {}
    gen_tokens = answers * g.max_tokens
    shapes = None
    if recipe.student:
        shapes = student_shapes(recipe.student, online)
    teacher_refs = []
    for ref in () if own_pairs else (t.chosen, t.rejected, t.samples):
        ref = t.chosen if isinstance(ref, DerivedTeacher) else ref  # a derived teacher has the chosen one's shapes
        if ref and ref not in teacher_refs:
            teacher_refs.append(ref)
    teacher_shapes = [_local_shapes(ref) for ref in teacher_refs]
    if not cuda and teacher_shapes and all(teacher_shapes):
        params_b = max(s.params for s in teacher_shapes) / 1e9
        eta["generate"] = gen_tokens / (CPU_GEN_TOK_S_135M * 0.135 / params_b)
    measured = {} if own_pairs else meter_throughputs(recipe, run_dir)
    if measured:  # the meter's tokens/s of each teacher on this machine (CPU or GPU) beat any scaled guess
        eta["generate"] = sum((n or 0) * g.samples_per_prompt * g.max_tokens / tps for tps in measured.values())
        facts["generate_tokens_per_s"] = measured
        console.print("generate throughput measured by the meter on this machine: "
                      + ", ".join(f"{role} {tps:,.0f} tok/s" for role, tps in measured.items()))
    if recipe.train:
        tr = recipe.train
        pairs_max = n or 0
        per_step = tr.batch_size * tr.grad_accum * tr.num_processes  # the global batch
        steps = tr.max_steps or math.ceil(pairs_max / per_step * tr.epochs) if pairs_max else tr.max_steps
        pairs_max *= recipe.pairing.pairs_per_prompt if recipe.pairing.mode == "by_score" and not own_pairs else 1
        pairs_max += (n or 0) if recipe.pairing.contrast and not own_pairs else 0  # one contrast pair per prompt
        steps = tr.max_steps or math.ceil(pairs_max / per_step * tr.epochs) if pairs_max else tr.max_steps
        if recipe.rounds.n > 1:  # the prompts split in n shares, one per round; steps as each round sets them
            r, share = recipe.rounds, math.ceil(pairs_max / recipe.rounds.n / per_step) if pairs_max else None
            if r.max_steps:
                per_round = list(r.max_steps)
            elif r.epochs:  # each share holds about 1/n of the pairs
                per_round = [math.ceil(share * e) if share else None for e in r.epochs]
            else:
                per_round = [tr.max_steps] * r.n
            steps = sum(per_round) if None not in per_round else steps
            console.print(f"on-policy rounds: {r.n} (round r ≥ 2: the student after round r - 1 answers share r of "
                          f"the prompts, and training goes on from its adapter); steps per round, at most: "
                          f"{', '.join(str(s or '?') for s in per_round)}")
        console.print(f"training: at most {pairs_max or '?'} pairs, {per_step} per step → "
                      f"{steps or '?'} optimizer steps" + (" (DPO, then the same for the SFT contrast)"
                                                           if recipe.contrast.sft else ""))
        facts["train_steps"] = steps
        if shapes is not None:
            from lite_delta.train.backends import unsloth_available
            from lite_delta.train.plan import estimate

            # auto on a GPU: Unsloth where it is installed (on this machine: the dry run's guess for that GPU)
            backend = tr.backend if tr.backend != "auto" else "unsloth" if unsloth_available() else "peft"
            est = estimate(shapes, batch_size=tr.batch_size, max_length=tr.max_length, lora_r=tr.lora_r,
                           backend=backend)
            console.print(f"VRAM (planner, QLoRA DPO step on a GPU, {backend} backend): ~{est.total_gib:.1f} GiB at "
                          f"batch {tr.batch_size} x {tr.max_length} tokens, LoRA r {tr.lora_r} "
                          f"({shapes.params / 1e9:.2f} B parameters)")
            facts["vram_gib"] = round(est.total_gib, 2)
            if not cuda and steps:
                eta["train"] = steps * per_step * CPU_TRAIN_S_PER_PAIR_135M * (shapes.params / 1e9 / 0.135)
                if recipe.contrast.sft:  # the same steps on the chosen side only, no reference pass: ~1/3 of DPO's
                    eta["sft"] = eta["train"] / 3
        else:
            console.print("VRAM: unknown (the student's config.json is not cached and the Hub is offline)")
    if cuda and measured:
        console.print(f"ETA on this GPU: generate ~{eta['generate'] / 60:.0f} min (up to {g.max_tokens} tokens per "
                      "answer, at the meter's measured tokens/s); training not estimated on a GPU yet")
    elif cuda:
        console.print("ETA: not estimated on a GPU yet (no measured GPU throughput in this project)")
    elif eta:
        total = sum(eta.values())
        parts = ", ".join(f"{k} ~{v / 60:.0f} min" for k, v in eta.items())
        console.print(f"rough ETA on this CPU: ~{total / 60:.0f} min ({parts}; evaluation not included), from "
                      "throughputs measured on a 2-core CPU with SmolLM2-135M, scaled by parameter count"
                      + ("; generate from the meter's tokens/s on this machine" if measured else ""))
    facts["eta_s"] = {k: round(v) for k, v in eta.items()}
    return facts


def print_conversion(recipe: Recipe, console: Console) -> dict:
    """The convert stage (a transformers student as a GGUF), the evaluation engine and the export, as planned."""
    from lite_delta.models.hf_gguf import CONVERT_BYTES_PER_S, conversion_estimate
    from lite_delta.models.hf_gguf import cache_root as converted_cache
    from lite_delta.pipeline import convert_settings, exports, student_config_folder, student_conversion

    conversion = student_conversion(recipe)
    facts = {"state": conversion.state, "architecture": conversion.architecture}
    if conversion.state == "unsupported":
        console.print(f"convert: none — {conversion.reason}. So: evaluation through transformers, no export")
    if conversion.state != "convert":
        if recipe.evaluate and recipe.student_gguf_ref():
            console.print(f"evaluate: llama.cpp on {recipe.student_gguf_ref()} where the engine is auto")
        return facts
    settings = convert_settings(recipe)
    # from the cache or the folder only (never the network): exact where the weights are here
    estimate = conversion_estimate(recipe.student, settings["dtype"])
    size, seconds, how = estimate.get("bytes"), estimate.get("seconds"), "exact"
    if size is None and student_config_folder(recipe.student) is not None:
        shapes = student_shapes(recipe.student, online=False)
        if shapes is not None:  # config.json only: 16-bit weights, two bytes a parameter
            size, how = shapes.params * 2, "from config.json's parameter count"
    published = PUBLISHED_STUDENTS.get(recipe.student)
    if size is None and published:
        size, how = published[1] * 2, f"from its published {published[1] / 1e9:.2f} B parameters, not cached here"
        estimate["architecture"] = estimate.get("architecture") or published[0]
    if size is not None and not seconds:
        seconds = size / CONVERT_BYTES_PER_S
    where = converted_cache()
    arch = conversion.architecture or estimate.get("architecture") or "architecture unknown until config.json is here"
    console.print(f"convert: {recipe.student} → GGUF ({arch}; {settings['dtype']}): "
                  + (f"~{size / GIB:.1f} GiB ({how})" if size else "size unknown offline")
                  + (f", ~{max(seconds / 60, 1):.0f} min (rough: {CONVERT_BYTES_PER_S / 1e6:.0f} MB/s)" if seconds else "")
                  + f"; made once, cached in {where}")
    quant = settings["eval_quant"]
    if quant:
        bits = QUANT_BITS.get(quant)
        console.print(f"convert: a {quant} copy for llama.cpp evaluation"
                      + (f", ~{size * bits / (32 if settings['dtype'] == 'f32' else 16) / GIB:.1f} GiB" if size and bits else "") + " (made once, cached)")
    e = recipe.evaluate
    for label, part in (("utility", e.utility if e else None), ("suite", e.suite if e else None)):
        if part is None:
            continue
        if part.engine == "transformers":
            console.print(f"evaluate {label}: transformers + PEFT (engine: transformers)")
        else:
            on = f"the {quant} copy" if quant else f"the {settings['dtype']} GGUF"
            console.print(f"evaluate {label}: llama.cpp on {on}, the tuned student as base + the adapter as a GGUF LoRA")
    if exports(recipe):
        x = recipe.export
        console.print("export: adapter.gguf (a GGUF LoRA for the converted GGUF)"
                      + (f", merged-f16.gguf and merged-{x.quant}.gguf, Modelfile and Modelfile.merged" if x.merge
                         else ", Modelfile") + ", README.md")
    facts.update(bytes=size, seconds=seconds, eval_quant=quant)
    return facts
