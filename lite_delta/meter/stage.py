"""The delta meter: before hours of generation and training, do the two teachers differ measurably?

Both teachers answer the same small verifiable sample (items.py) through llama.cpp with the generation
settings the recipe will use; the meter reports each one's score per task, the delta (chosen minus
rejected) with a paired-bootstrap 95% CI, each teacher's measured tokens/s on this machine (the dry
run's generate ETA then comes from it), and a verdict (verdict.py). In by_score mode the one teacher is
sampled k times per prompt and chosen/rejected are the best and worst of the k, as pairing ranks them.
Writes OUT/meter.json, OUT/meter.md and each teacher's answers (OUT/answers-<role>.jsonl).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from lite_delta.bootstrap import N_BOOTSTRAP, paired_difference
from lite_delta.config import DerivedTeacher, MeterConfig
from lite_delta.environment import cores, cpu_name
from lite_delta.errors import LiteDeltaError
from lite_delta.files import writable_dir, write_json, write_text
from lite_delta.inference.engine import (
    BatchedEngine,
    GGUFModel,
    Request,
    SamplingParams,
    SequentialEngine,
    default_threads,
    gpu_offload_available,
    round_up,
)
from lite_delta.meter import items as meter_items
from lite_delta.meter.verdict import ADVICE, NEGATIVE, thresholds_text, verdict
from lite_delta.models.refs import model_identity, resolve_model
from lite_delta.progress import progress_bar

METER_FILE = "meter.json"
ACCURACY_TASKS = ("gsm8k", "ifeval")


def settings_digest(cfg: MeterConfig) -> str:
    """What makes a meter result what it is (not where it is written, nor what to do with a negative one)."""
    data = cfg.model_dump(mode="json", exclude={"out", "on_negative", "enabled"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def finished(out: Path, cfg: MeterConfig) -> dict | None:
    """A meter.json in OUT made with these settings, or None."""
    try:
        result = json.loads((Path(out) / METER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if result.get("settings_digest") == settings_digest(cfg) else None


def mode_of(cfg: MeterConfig) -> str:
    """by_score (one teacher, best vs worst of k) or by_model (chosen vs rejected); a missing teacher is an error."""
    if cfg.samples and not (cfg.chosen or cfg.rejected):
        return "by_score"
    if not cfg.chosen:
        raise LiteDeltaError("meter: no chosen teacher: give --chosen REF (a .gguf path, hf://... or pkg://...)")
    if cfg.rejected is None:
        raise LiteDeltaError("meter: no rejected teacher: give --rejected REF, or --derive QUANT to requantize the "
                             "chosen teacher (e.g. --derive Q2_K)")
    return "by_model"


def teachers(cfg: MeterConfig, mode: str, cache_dir: Path | None = None) -> list[dict]:
    """[{role, ref, path, derived?}]: the GGUF files the meter runs (a derived one made or reused here)."""
    from lite_delta.models.derive import derive_gguf

    if mode == "by_score":
        return [{"role": "samples", "ref": cfg.samples, "path": resolve_model(cfg.samples)}]
    chosen = {"role": "chosen", "ref": cfg.chosen, "path": resolve_model(cfg.chosen)}
    if isinstance(cfg.rejected, DerivedTeacher):
        path, provenance = derive_gguf(cfg.chosen, cfg.rejected.derive, cache_dir=cache_dir)
        rejected = {"role": "rejected", "ref": f"{cfg.chosen} requantized to {cfg.rejected.derive}", "path": path,
                    "derived": provenance}
    else:
        rejected = {"role": "rejected", "ref": cfg.rejected, "path": resolve_model(cfg.rejected)}
    return [chosen, rejected]


def build_items(cfg: MeterConfig, tasks: list[str]) -> tuple[dict[str, list], dict]:
    """The items of each task (evaluation items dropped first, then a seeded sample of ``limit``) and their sources."""
    texts, eval_sources = meter_items.eval_texts(cfg.eval_data_dir)
    by_task, info = {}, {"checked_against": eval_sources, "tasks": {}}
    for task in tasks:
        if task == "gsm8k":
            rows, source = meter_items.gsm8k_train_rows(cfg.data_dir)
            pool = meter_items.gsm8k_items(rows)
        elif task == "ifeval":
            pool, source = meter_items.ifeval_items(meter_items.ifeval_rows()), "lite-delta's IFEval-style prompts"
        else:
            from lite_delta.prompts import load_prompts
            from lite_delta.utility_scorers import checked_scorer, get_scorer

            if cfg.prompts is None:
                raise LiteDeltaError("meter task scorer needs prompts: give --prompts SRC (or --recipe RECIPE)")
            p = cfg.prompts
            prompts, _ = load_prompts(p.source, column=p.column, split=p.split, config=p.config, n=p.n, sample=p.sample, seed=p.seed)
            pool = meter_items.scorer_items(prompts, checked_scorer(get_scorer(cfg.scorer), cfg.scorer))
            source = f"{p.source} (scorer {cfg.scorer})"
        kept, dropped = meter_items.drop_evaluation_items(pool, texts)
        by_task[task] = meter_items.sample(kept, cfg.limit, cfg.seed)
        info["tasks"][task] = {"source": source, "pool": len(pool), "dropped_as_evaluation_items": dropped,
                               "n": len(by_task[task])}
        if not by_task[task]:
            raise LiteDeltaError(f"meter task {task}: no item left ({len(pool)} in {source}, {dropped} of them "
                                 "evaluation items)")
    return by_task, info


def item_seed(seed: int, item_id: str, sample: int) -> int:
    digest = hashlib.sha256(f"meter:{seed}:{item_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def answer(path: Path, items: list, cfg: MeterConfig, k: int, *, label: str, progress: bool) -> tuple[list, dict]:
    """Each item's k answers from one GGUF, and the throughput measured while making them."""
    g = cfg.generation
    max_tokens = cfg.max_tokens or g.max_tokens
    params = SamplingParams(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, max_tokens=max_tokens,
                            stop=tuple(g.stop))
    model = GGUFModel(path, n_gpu_layers=g.n_gpu_layers, chat_template=cfg.chat_template,
                      chat_template_kwargs=g.chat_template_kwargs)
    engine = None
    try:
        requests = []
        for i, item in enumerate(items):
            tokens = model.tokenize_prompt(model.render(item.messages, g.system))
            requests += [Request(f"{i}:{s}", tokens, item_seed(g.seed, item.item_id, s), payload=(i, s))
                         for s in range(k)]
        longest = max(len(r.tokens) for r in requests)
        n_ctx = min(round_up(longest + max_tokens), round_up(model.n_ctx_train))
        threads = g.n_threads or default_threads()
        started = time.perf_counter()
        if g.engine == "batched":
            engine = BatchedEngine(model, slots=g.parallel, n_ctx_per_seq=n_ctx, n_threads=threads)
        else:
            engine = SequentialEngine(model, n_ctx_per_seq=n_ctx, n_threads=threads)
        texts = [[""] * k for _ in items]
        new_tokens = truncated = 0
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task(f"meter {label}", total=len(requests), rate="")
            for done in engine.generate(requests, params):
                i, s = done.request.payload
                texts[i][s] = done.text
                new_tokens += len(done.token_ids)
                truncated += done.finish_reason == "length"
                bar.update(task, advance=1, rate=f"{new_tokens / (time.perf_counter() - started):,.0f} tok/s")
        seconds = time.perf_counter() - started
        speed = {"answers": len(requests), "completion_tokens": new_tokens, "seconds": round(seconds, 2),
                 "tokens_per_s": round(new_tokens / seconds, 1) if seconds > 0 else None,
                 "mean_completion_tokens": round(new_tokens / len(requests), 1), "truncated": truncated,
                 "engine": g.engine, "slots": engine.slots, "n_threads": threads,
                 "gpu_offload": model.n_gpu_layers > 0 and gpu_offload_available()}
    finally:
        if engine is not None:
            engine.close()
        model.close()
    return texts, speed


def summarize(scores: dict[str, tuple[list[float], list[float]]], *, min_delta: float, min_margin: float,
              seed: int, draws: int = N_BOOTSTRAP) -> tuple[list[dict], dict]:
    """Per-task rows and the overall verdict from per-item (chosen, rejected) scores."""
    rows, accuracy_draws = [], []
    for n, (task, (chosen, rejected)) in enumerate(scores.items()):
        d = paired_difference(chosen, rejected, seed=seed + n, draws=draws)
        threshold = min_margin if task == "scorer" else min_delta
        row = {"task": task, "n": len(chosen), "chosen": float(np.mean(chosen)), "rejected": float(np.mean(rejected)),
               "diff": d["diff"], "ci95": d["ci95"], "min_delta": threshold,
               "unit": "scorer units" if task == "scorer" else "accuracy (0-1)",
               "verdict": verdict(d["diff"], d["ci95"], threshold)}
        rows.append(row)
        if task in ACCURACY_TASKS:
            accuracy_draws.append(d["draws"])
    if accuracy_draws:
        acc = [r for r in rows if r["task"] in ACCURACY_TASKS]
        macro = np.mean(accuracy_draws, axis=0)
        diff = float(np.mean([r["diff"] for r in acc]))
        ci = [float(np.percentile(macro, 2.5)), float(np.percentile(macro, 97.5))]
        overall = {"measure": "mean over " + ", ".join(r["task"] for r in acc), "diff": diff, "ci95": ci,
                   "min_delta": min_delta, "verdict": verdict(diff, ci, min_delta),
                   "thresholds": thresholds_text(min_delta)}
    else:
        row = rows[0]
        overall = {"measure": row["task"], "diff": row["diff"], "ci95": row["ci95"], "min_delta": min_margin,
                   "verdict": row["verdict"], "thresholds": thresholds_text(min_margin, "scorer units", 1.0)}
    overall["advice"] = ADVICE[overall["verdict"]]
    return rows, overall


def meter(cfg: MeterConfig, *, progress: bool = True, cache_dir: Path | None = None) -> dict:
    """Measure the teachers' delta; write OUT/meter.json and OUT/meter.md; return the result."""
    out = writable_dir(cfg.out, "--out")
    started = time.perf_counter()
    mode = mode_of(cfg)
    tasks = ["scorer"] if mode == "by_score" else list(cfg.tasks)
    if mode == "by_score" and cfg.generation.samples_per_prompt < 2:
        raise LiteDeltaError("meter in by_score mode needs generation.samples_per_prompt >= 2 (best vs worst of k)")
    by_task, data = build_items(cfg, tasks)  # data problems show before any model is loaded or derived
    models = teachers(cfg, mode, cache_dir)
    items = [it for task in tasks for it in by_task[task]]
    k = cfg.generation.samples_per_prompt if mode == "by_score" else 1
    per_role, speeds = {}, {}
    for m in models:
        texts, speeds[m["role"]] = answer(m["path"], items, cfg, k, label=m["role"], progress=progress)
        graded = [[it.grade(t) for t in answers] for it, answers in zip(items, texts)]
        per_role[m["role"]] = graded
        with open(out / f"answers-{m['role']}.jsonl", "w", encoding="utf-8") as f:
            for it, answers, grades in zip(items, texts, graded):
                f.write(json.dumps({"task": it.task, "id": it.item_id, "prompt": it.messages[-1]["content"],
                                    "answers": answers, "scores": grades}, ensure_ascii=False) + "\n")
    scores = {}
    for task in tasks:
        idx = [i for i, it in enumerate(items) if it.task == task]
        if mode == "by_score":
            g = per_role["samples"]
            scores[task] = ([max(g[i]) for i in idx], [min(g[i]) for i in idx])
        else:
            scores[task] = ([per_role["chosen"][i][0] for i in idx], [per_role["rejected"][i][0] for i in idx])
    rows, overall = summarize(scores, min_delta=cfg.min_delta, min_margin=cfg.min_margin, seed=cfg.seed)
    for row in rows:
        row.update(data["tasks"][row["task"]])
    result = {
        "mode": mode, "samples_per_item": k,
        "teachers": {m["role"]: {"ref": m["ref"], "file": str(m["path"]), "identity": model_identity(m["path"]),
                                 **({"derived": m["derived"]} if "derived" in m else {}), **speeds[m["role"]]}
                     for m in models},
        "tasks": rows, "overall": overall,
        "disjointness": {"checked_against": data["checked_against"],
                         "rule": "items whose prompt equals (case and spacing aside) a GSM8K test question or an "
                                 "IFEval prompt of the suite are dropped before sampling"},
        "generation": {**cfg.generation.model_dump(mode="json"),
                       "max_tokens": cfg.max_tokens or cfg.generation.max_tokens},
        "machine": {"cpu": cpu_name(), "cores": cores()},
        "bootstrap": {"draws": N_BOOTSTRAP, "seed": cfg.seed, "paired_by": "item"},
        "seconds": round(time.perf_counter() - started, 1),
        "settings_digest": settings_digest(cfg),
    }
    write_json(out / METER_FILE, result)
    write_text(out / "meter.md", markdown(result))
    return result


def stop_if_negative(result: dict, on_negative: str, where: Path) -> None:
    """`lite-delta run` stops before generating when the delta is negative, unless the recipe says go on."""
    if result["overall"]["verdict"] == NEGATIVE and on_negative == "stop":
        o = result["overall"]
        raise LiteDeltaError(
            f"meter: negative delta {100 * o['diff']:+.1f} [{100 * o['ci95'][0]:+.1f}, {100 * o['ci95'][1]:+.1f}] "
            f"({o['measure']}): the teachers are the wrong way round; swap teachers.chosen and teachers.rejected, or "
            f"set meter.on_negative: continue to generate anyway (see {where / METER_FILE})")


def _fmt(row: dict, key: str) -> str:
    value = row[key]
    return f"{value:.2f}" if row.get("unit") == "scorer units" else f"{100 * value:.1f}"


def markdown(result: dict) -> str:
    t = result["teachers"]
    roles = list(t)
    lines = [f"- {role}: `{t[role]['ref']}`" for role in roles]
    derived = t.get("rejected", {}).get("derived")
    if derived:
        lines.append(f"- rejected derived from `{derived['derived_from']}` ({derived['source_file_type']} -> "
                     f"{derived['quant']}){'; ' + derived['note'] if derived.get('note') else ''}"
                     f"{'; ' + derived['fallback_note'] if derived.get('fallback_note') else ''}")
    sides = "chosen | rejected" if result["mode"] == "by_model" else "best of k | worst of k"
    head = f"| task | n | {sides} | delta | 95% CI (paired bootstrap) | verdict |"
    lines += ["", head, "|---|---|---|---|---|---|---|"]
    for r in result["tasks"]:
        scale = 1 if r["unit"] == "scorer units" else 100
        lines.append(f"| {r['task']} | {r['n']} | {_fmt(r, 'chosen')} | {_fmt(r, 'rejected')} | "
                     f"{scale * r['diff']:+.1f} | [{scale * r['ci95'][0]:+.1f}, {scale * r['ci95'][1]:+.1f}] | "
                     f"{r['verdict'].replace('_', ' ')} |")
    o = result["overall"]
    scale = 100 if o["measure"] != "scorer" else 1
    lines += ["", f"**Verdict ({o['measure']}): {o['advice']}** — delta {scale * o['diff']:+.1f} "
                  f"[{scale * o['ci95'][0]:+.1f}, {scale * o['ci95'][1]:+.1f}].",
              f"Thresholds: {o['thresholds']}.", "",
              "| teacher | answers | tokens | seconds | tokens/s | truncated |", "|---|---|---|---|---|---|"]
    for role in roles:
        s = t[role]
        lines.append(f"| {role} | {s['answers']} | {s['completion_tokens']} | {s['seconds']:.1f} | "
                     f"{s['tokens_per_s']} | {s['truncated']} |")
    m = result["machine"]
    lines += ["", f"Accuracy scores in %. Machine: {m['cpu']}, {m['cores']} cores; engine {t[roles[0]]['engine']}, "
                  f"{t[roles[0]]['slots']} slots, max_tokens {result['generation']['max_tokens']}; "
                  f"{result['seconds']:.0f} s in all."]
    return "\n".join(lines) + "\n"
