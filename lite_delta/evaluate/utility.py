"""The demo's measure: the pairing utility (e.g. list items) of the student's answers to held-out prompts.

Base and tuned student are sampled by the same engine (llama.cpp's batched engine for a GGUF student, the
tuned one with its LoRA exported to a GGUF adapter; or transformers with the PEFT adapter), with the same
prompts, chat template, settings and seeds, so their means compare fairly.
From the base samples come two more bars: per prompt the best of k samples (what pairing would pick as
*chosen*) and the worst (*rejected*). ``compare_utility`` puts the four side by side with bootstrap CIs
over prompts and asks the demo's question: is the tuned student above the chosen answers?
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from lite_delta.completions import template_kwargs_part
from lite_delta.config import UtilityEvalConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.files import read_appended, write_json

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
RESULT_FILE = "utility.json"
N_BOOTSTRAP = 10_000
# Settings that make an answer what it is: a rerun into the same folder must match them.
CHECKED_FIELDS = ("prompts", "temperature", "top_p", "max_tokens", "seed", "model", "adapter_sha256",
                  "chat_template_sha256", "template_kwargs", "precision", "engine")


def item_seed(seed: int, prompt_id: str, sample: int) -> int:
    digest = hashlib.sha256(f"utility:{seed}:{prompt_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF


class PerRowSampler:
    """A logits processor that samples each row with its own generator and leaves only that token.

    Run under greedy decoding, generate() then takes exactly the token drawn here, so a row's answer
    depends on its own (prompt, sample) seed and not on what else is in the batch. Honest limit: the
    logits themselves can differ in the last bits with the batch's padding width, so a different batch
    composition can (rarely) flip a near-tie; the same settings and batch size reproduce bit for bit,
    and a resumed run forms the same batches (batches are cut from the full, fixed item order).
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        import torch

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float().cpu()
        if self.temperature == 0:
            picks = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            if self.top_p < 1.0:
                sorted_p, order = probs.sort(dim=-1, descending=True)
                # keep the smallest prefix whose mass reaches top_p (the first token always stays)
                drop = sorted_p.cumsum(-1) - sorted_p >= self.top_p
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            picks = torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, self.generators)])
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(scores.shape[0]), picks.to(scores.device)] = 0.0
        return forced


def read_samples(path: Path) -> dict[str, dict]:
    """Finished answers by key; a torn last line (killed mid-write) is cut off."""
    return read_appended(path, lambda record: record["key"])


def _check_settings(out: Path, settings: dict) -> None:
    path = out / RESULT_FILE
    if not path.is_file() or not (out / SAMPLES_FILE).is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))["settings"]
    except (ValueError, KeyError, TypeError):
        return
    def canonical(s: dict, field: str) -> str:
        value = s.get(field)
        if field == "prompts" and isinstance(value, dict):  # more or fewer prompts extend or reuse the answers
            value = {k: v for k, v in value.items() if k != "n"}
        return json.dumps(value, sort_keys=True, default=str)

    changed = [f for f in CHECKED_FIELDS if canonical(previous, f) != canonical(settings, f)]
    if changed:
        raise LiteDeltaError(
            f"{out} holds answers made with other settings ({', '.join(changed)}): "
            "use a new output folder, or delete it to start over"
        )


def open_engine(cfg: UtilityEvalConfig, student: str, adapter: Path | None, cache_dir: Path,
                 chat_template_kwargs: dict | None = None):
    """llama.cpp's batched engine for a GGUF student (the adapter attached as a GGUF LoRA; a Q4_1 or Q5_1 file
    read as ``models.derive.batched_gguf`` says), else transformers."""
    from lite_delta.evaluate.engines import LlamaCppEngine, TransformersEngine
    from lite_delta.models.derive import batched_gguf
    from lite_delta.models.student import is_gguf_reference

    engine = cfg.engine
    if engine == "auto":
        engine = "llama.cpp" if is_gguf_reference(student) or student.startswith("hf://") else "transformers"
    if engine == "llama.cpp":
        student, _ = batched_gguf(student, cache_dir)  # made once beside the exported adapters
        return LlamaCppEngine(student, adapter=adapter, cache_dir=cache_dir, parallel=cfg.parallel,
                              chat_template_kwargs=chat_template_kwargs)
    if is_gguf_reference(student):
        from lite_delta.models.student import prepare_student

        student = prepare_student(student, cache_dir)
    engine = TransformersEngine(student, adapter=adapter, cache_dir=cache_dir, batch_size=cfg.batch_size,
                                chat_template_kwargs=chat_template_kwargs)
    if adapter is not None and engine.precision == "fp32":
        # the same function up to rounding, without LoRA's extra small matmuls in every layer (several x slower)
        engine.model = engine.model.merge_and_unload().eval()
    return engine


def _prompt_tokens(engine, prompt) -> list[int]:
    if engine.name == "llama.cpp":
        return engine.model.tokenize_prompt(engine.model.render(list(prompt.messages)))
    return engine._encode(engine.render_messages(list(prompt.messages)))


def utility_eval(
    cfg: UtilityEvalConfig,
    *,
    student: str,
    adapter: Path | None,
    scorer: str,
    out: Path,
    progress: bool = True,
    k: int | None = None,
    cache_dir: Path | None = None,
    label: str | None = None,
    chat_template_kwargs: dict | None = None,
) -> dict:
    """Sample ``samples_per_prompt`` answers per held-out prompt, score them, write ``out/utility.json``.

    ``student``: a GGUF reference (llama.cpp's batched engine; ``adapter`` a PEFT folder exported to a GGUF
    LoRA once, or a GGUF adapter), or what transformers loads (``cfg.engine`` chooses; auto: llama.cpp for
    a GGUF). ``k``: the samples per prompt that pairing ranked (best/worst of k); default
    ``samples_per_prompt``. With more samples than k, best- and worst-of-k are averaged over consecutive
    blocks of k samples. ``cache_dir``: where a GGUF student is converted or an adapter exported once
    (default ``out/model``). ``chat_template_kwargs``: the student's template variables (e.g. enable_thinking).
    """
    from lite_delta.progress import progress_bar
    from lite_delta.prompts import load_prompts
    from lite_delta.utility_scorers import checked_scorer, get_scorer

    k = k or cfg.samples_per_prompt
    if k < 1 or k > cfg.samples_per_prompt:
        raise LiteDeltaError(f"best/worst of k needs 1 <= k <= samples_per_prompt ({cfg.samples_per_prompt}), not {k}")
    score = checked_scorer(get_scorer(scorer), scorer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = cfg.prompts
    prompts, prompt_stats = load_prompts(p.source, column=p.column, split=p.split, config=p.config, n=p.n, sample=p.sample, seed=p.seed)
    engine = open_engine(cfg, student, adapter, Path(cache_dir or out / "model"), chat_template_kwargs)
    settings = {
        **cfg.model_dump(mode="json"),
        **{key: engine.identity[key] for key in ("model", "adapter", "adapter_sha256", "precision",
                                                  "chat_template_sha256", "engine")},
        **template_kwargs_part(engine.chat_template_kwargs),
        "k": k,
    }
    _check_settings(out, settings)

    items = []  # fixed order (sample-major) so batches, and so answers, are the same after a resume
    over_budget = 0
    encoded = {}
    for prompt in prompts:
        tokens = _prompt_tokens(engine, prompt)
        if len(tokens) > p.max_prompt_tokens:
            over_budget += 1
            continue
        encoded[prompt.prompt_id] = tokens
    kept = [pr for pr in prompts if pr.prompt_id in encoded]
    if not kept:
        raise LiteDeltaError(f"no prompt of {p.source} fits max_prompt_tokens ({p.max_prompt_tokens})")
    for sample in range(cfg.samples_per_prompt):
        for prompt in kept:
            items.append((f"{prompt.prompt_id}:{sample}", prompt, sample, item_seed(cfg.seed, prompt.prompt_id, sample)))

    path = out / SAMPLES_FILE
    done = read_samples(path)
    write_json(out / RESULT_FILE, {"status": "running", "settings": settings})
    sample_fn = _sample_llama if engine.name == "llama.cpp" else _sample_transformers
    started, new_tokens = time.perf_counter(), 0
    with progress_bar(disable=not progress) as bar, open(path, "a", encoding="utf-8") as sink:
        label = label or "utility " + ("tuned" if adapter else "base")
        task = bar.add_task(label, total=len(items), completed=sum(1 for it in items if it[0] in done), rate="")
        for (key, prompt, sample, seed), text, finish, n_tokens in sample_fn(engine, cfg, items, encoded, done):
            record = {
                "key": key, "prompt_id": prompt.prompt_id, "index": prompt.index, "sample": sample, "seed": seed,
                "completion": text, "finish_reason": finish, "completion_tokens": n_tokens, "score": score(text),
            }
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            done[key] = record
            new_tokens += n_tokens
            elapsed = time.perf_counter() - started
            bar.update(task, advance=1, rate=f"{new_tokens / elapsed:,.0f} tok/s")
    engine.close()

    per_prompt = {}
    for prompt in kept:
        scores = np.array([score(done[f"{prompt.prompt_id}:{s}"]["completion"]) for s in range(cfg.samples_per_prompt)])
        blocks = scores[: len(scores) // k * k].reshape(-1, k)
        per_prompt[prompt.prompt_id] = {
            "index": prompt.index, "mean": float(scores.mean()), "scores": scores.tolist(),
            "best_of_k": float(blocks.max(axis=1).mean()), "worst_of_k": float(blocks.min(axis=1).mean()),
        }
    result = {
        "status": "complete",
        "scorer": scorer,
        "settings": settings,
        "prompt_stats": {**prompt_stats, "over_budget": over_budget},
        "n_prompts": len(per_prompt),
        "n_samples": len(per_prompt) * cfg.samples_per_prompt,
        **_summary(per_prompt),
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "new_tokens_this_run": new_tokens,
        "per_prompt": per_prompt,
    }
    write_json(out / RESULT_FILE, result)
    return result


def _sample_llama(engine, cfg: UtilityEvalConfig, items: list, encoded: dict, done: dict):
    """Every unfinished item through llama.cpp's batched engine; each (prompt, sample) has its own seed,
    and the engine's batch shapes do not depend on the other sequences, so a resume gives the same answers."""
    from lite_delta.inference.engine import BatchedEngine, Request, SamplingParams, round_up

    todo = {it[0]: it for it in items if it[0] not in done}
    if not todo:
        return
    requests = [Request(key, encoded[it[1].prompt_id], it[3] & 0x7FFFFFFF) for key, it in todo.items()]
    n_ctx = round_up(max(len(r.tokens) for r in requests) + cfg.max_tokens)
    runner = BatchedEngine(engine.model, slots=min(cfg.parallel, len(requests)), n_ctx_per_seq=n_ctx,
                           adapter=engine.adapter)
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    try:
        for completion in runner.generate(requests, params):
            yield (todo[completion.request.key], completion.text, completion.finish_reason,
                   len(completion.token_ids))
    finally:
        runner.close()


def _sample_transformers(engine, cfg: UtilityEvalConfig, items: list, encoded: dict, done: dict):
    """Batches cut from the full, fixed item order (so a resume forms the same batches), each row sampled
    with its own generator (PerRowSampler)."""
    import torch

    tokenizer, model = engine.tokenizer, engine.model
    pad = tokenizer.pad_token_id
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for start in range(0, len(items), cfg.batch_size):
        todo = [it for it in items[start : start + cfg.batch_size] if it[0] not in done]
        if not todo:
            continue
        width = max(len(encoded[it[1].prompt_id]) for it in todo)
        ids = [[pad] * (width - len(encoded[it[1].prompt_id])) + encoded[it[1].prompt_id] for it in todo]
        mask = [[0] * (width - len(encoded[it[1].prompt_id])) + [1] * len(encoded[it[1].prompt_id]) for it in todo]
        sampler = PerRowSampler([it[3] for it in todo], cfg.temperature, cfg.top_p)
        with torch.no_grad():
            generated = model.generate(
                input_ids=torch.tensor(ids, device=model.device),
                attention_mask=torch.tensor(mask, device=model.device),
                max_new_tokens=cfg.max_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                logits_processor=[sampler], pad_token_id=pad,
            )
        for item, row in zip(todo, generated[:, width:].tolist()):
            end = next((i for i, t in enumerate(row) if t in eos), None)
            tokens = row if end is None else row[:end]
            yield item, tokenizer.decode(tokens, skip_special_tokens=True), "stop" if end is not None else "length", len(tokens)


def _bootstrap_means(values: np.ndarray, rng: np.random.Generator, b: int = N_BOOTSTRAP) -> np.ndarray:
    return values[rng.integers(0, len(values), size=(b, len(values)))].mean(axis=1)


def _ci(draws: np.ndarray) -> list[float]:
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def _summary(per_prompt: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, field in (("mean", "mean"), ("best_of_k_mean", "best_of_k"), ("worst_of_k_mean", "worst_of_k")):
        values = np.array([v[field] for v in per_prompt.values()])
        out[name] = float(values.mean())
        out[name.replace("mean", "ci95")] = _ci(_bootstrap_means(values, rng))
    return out


def compare_utility(base: dict, tuned: dict, seed: int = 0, n_bootstrap: int = N_BOOTSTRAP,
                    sft: dict | None = None, coherence: dict[str, dict] | None = None) -> dict:
    """Base, held-out chosen (base best-of-k), rejected (base worst-of-k), tuned (DPO) and, given `sft`, the
    SFT-on-chosen student's means, each with a bootstrap 95% CI over prompts; tuned - chosen (and tuned - sft,
    sft - chosen) with paired bootstrap CIs: one set of prompt draws for every column.

    `coherence`: per student name (base, tuned, sft) the per-prompt figures of ``coherence.per_prompt``; adds
    each column's degenerate share and relevance, their paired differences from the base student, and
    whether the tuned (and SFT) student stays within the bounds (``coherent``)."""
    runs = {**({"sft": sft} if sft is not None else {}), "tuned": tuned}  # bar order: ..., sft, tuned
    ids = sorted(set(base["per_prompt"]).intersection(*(r["per_prompt"] for r in runs.values())))
    if not ids:
        raise LiteDeltaError(f"the base and {' and '.join(runs)} utility runs share no prompt")
    warnings = []
    for name, run in runs.items():
        for key in ("temperature", "top_p", "max_tokens", "seed", "samples_per_prompt", "prompts", "k",
                    "template_kwargs"):
            if base["settings"].get(key) != run["settings"].get(key):
                warnings.append(f"{key} differs between base and {name} "
                                f"({base['settings'].get(key)!r} vs {run['settings'].get(key)!r})")
        if base.get("scorer") != run.get("scorer"):
            warnings.append(f"scorer differs between base and {name} ({base.get('scorer')!r} vs {run.get('scorer')!r})")
    if len(ids) < max(len(r["per_prompt"]) for r in (base, *runs.values())):
        warnings.append(f"only {len(ids)} prompts are in every run")
    columns = {
        "base": np.array([base["per_prompt"][i]["mean"] for i in ids]),
        "rejected": np.array([base["per_prompt"][i]["worst_of_k"] for i in ids]),
        "chosen": np.array([base["per_prompt"][i]["best_of_k"] for i in ids]),
        **{name: np.array([run["per_prompt"][i]["mean"] for i in ids]) for name, run in runs.items()},
    }
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ids), size=(n_bootstrap, len(ids)))  # one set of draws: every CI is paired
    draws = {name: values[idx].mean(axis=1) for name, values in columns.items()}
    means = {name: float(values.mean()) for name, values in columns.items()}

    def paired(a: str, b: str) -> dict:
        d = draws[a] - draws[b]
        return {"diff": means[a] - means[b], "ci95": _ci(d), "p_not_above": float(np.mean(d <= 0))}

    summary = {
        "scorer": base.get("scorer"),
        "n_prompts": len(ids),
        "samples_per_prompt": {"base": base["settings"].get("samples_per_prompt"),
                               **{name: run["settings"].get("samples_per_prompt") for name, run in runs.items()}},
        "k": base["settings"].get("k"),
        "bars": {name: {"mean": means[name], "ci95": _ci(draws[name])} for name in columns},
        "tuned_minus_chosen": paired("tuned", "chosen"),
        "tuned_minus_base": {k: v for k, v in paired("tuned", "base").items() if k != "p_not_above"},
        "tuned_mean_above_chosen": means["tuned"] > means["chosen"],
        "target_met": paired("tuned", "chosen")["ci95"][0] > 0,
        "bootstrap": {"draws": n_bootstrap, "seed": seed, "paired_by": "prompt id"},
        "warnings": warnings,
    }
    if sft is not None:
        summary["tuned_minus_sft"] = paired("tuned", "sft")
        summary["sft_minus_chosen"] = paired("sft", "chosen")
        summary["sft_minus_base"] = {k: v for k, v in paired("sft", "base").items() if k != "p_not_above"}
    if coherence is not None:
        summary["coherence"] = _compare_coherence(coherence, ids, idx, list(runs))
        summary["coherent"] = summary["coherence"]["coherent"]["tuned"]
    return summary


def _compare_coherence(coherence: dict[str, dict], ids: list[str], idx: np.ndarray, runs: list[str]) -> dict:
    from lite_delta.evaluate.coherence import DEGENERATE_MARGIN, RELEVANCE_MARGIN

    base = coherence["base"]
    sources = {"base": lambda i: base[i], "rejected": lambda i: base[i]["rejected"],
               "chosen": lambda i: base[i]["chosen"], **{name: (lambda i, n=name: coherence[n][i]) for name in runs}}
    out: dict = {"bounds": {"degenerate_minus_base_at_most": DEGENERATE_MARGIN,
                            "relevance_minus_base_at_least": -RELEVANCE_MARGIN,
                            "on": "paired point estimates over prompts"}}
    for figure in ("degenerate", "relevance"):
        columns = {name: np.array([get(i)[figure] for i in ids]) for name, get in sources.items()}
        draws = {name: values[idx].mean(axis=1) for name, values in columns.items()}
        out[figure] = {name: {"mean": float(values.mean()), "ci95": _ci(draws[name])} for name, values in columns.items()}
        out[f"{figure}_minus_base"] = {
            name: {"diff": float(columns[name].mean() - columns["base"].mean()), "ci95": _ci(draws[name] - draws["base"])}
            for name in columns if name != "base"}
    out["coherent"] = {
        name: (out["degenerate_minus_base"][name]["diff"] <= DEGENERATE_MARGIN
               and out["relevance_minus_base"][name]["diff"] >= -RELEVANCE_MARGIN)
        for name in runs}
    return out


def utility_chart(summary: dict, path: Path) -> None:
    """Bars of base / rejected / chosen / (SFT on chosen) / tuned with their 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = summary["bars"]
    names = ["base", "rejected", "chosen", *(["sft"] if "sft" in bars else []), "tuned"]
    means = np.array([bars[n]["mean"] for n in names])
    lo = means - np.array([bars[n]["ci95"][0] for n in names])
    hi = np.array([bars[n]["ci95"][1] for n in names]) - means
    label = {"base": "base student", "rejected": "rejected\n(worst of k)", "chosen": "chosen\n(best of k)",
             "sft": "SFT on\nchosen", "tuned": "DPO\n(tuned)" if "sft" in bars else "tuned student"}
    color = {"base": "#8d99ae", "rejected": "#e76f51", "chosen": "#2a9d8f", "sft": "#e9c46a", "tuned": "#264653"}
    coherence = summary.get("coherence")
    width = 5.6 + 0.9 * (len(names) - 4)
    fig, axes = plt.subplots(1, 3 if coherence else 1, figsize=(width * (2.6 if coherence else 1), 3.8), dpi=120,
                             squeeze=False)
    ax = axes[0][0]
    ax.bar([label[n] for n in names], means, color=[color[n] for n in names], yerr=[lo, hi], capsize=5)
    if coherence:
        for panel, figure, ylabel in ((axes[0][1], "degenerate", "share of degenerate answers"),
                                      (axes[0][2], "relevance", "relevance (nats/token, base judge)")):
            m = np.array([coherence[figure][n]["mean"] for n in names])
            low = m - np.array([coherence[figure][n]["ci95"][0] for n in names])
            high = np.array([coherence[figure][n]["ci95"][1] for n in names]) - m
            panel.bar([label[n] for n in names], m, color=[color[n] for n in names], yerr=[low, high], capsize=5)
            panel.set_ylabel(ylabel)
            panel.axhline(0, color="grey", lw=0.8)
            panel.tick_params(axis="x", labelsize=8)
        bounds = coherence["bounds"]
        verdict = "within" if summary.get("coherent") else "OUTSIDE"
        axes[0][1].set_title(f"coherence: DPO {verdict} the bounds\n(degenerate <= base "
                             f"+{bounds['degenerate_minus_base_at_most']:.2f})", fontsize=10)
        axes[0][2].set_title(f"prompt relevance\n(>= base {bounds['relevance_minus_base_at_least']:+.2f})",
                             fontsize=10)

    def line(name: str, key: str) -> str:
        d = summary[key]
        return f"{name} {d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"

    title = line("DPO - chosen" if "sft" in bars else "tuned - chosen", "tuned_minus_chosen")
    if "tuned_minus_sft" in summary:
        title += "; " + line("DPO - SFT", "tuned_minus_sft")
    ax.set_ylabel(f"mean {summary.get('scorer') or 'utility'} per answer")
    ax.set_title(f"{summary.get('scorer') or 'utility'} on {summary['n_prompts']} held-out prompts\n"
                 f"{title} (95% CI)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def side_by_side(folder: Path, names: list[str], messages: dict[str, list[dict]], n: int = 3) -> list[dict]:
    """The first `n` held-out prompts (file order) with sample 0 of each student: same prompt, same seed."""
    samples = {name: read_samples(Path(folder) / name / SAMPLES_FILE) for name in names}
    rows = []
    for prompt_id in list(messages)[:n]:
        key = f"{prompt_id}:0"
        if all(key in samples[name] for name in names):
            rows.append({"prompt_id": prompt_id, "prompt": messages[prompt_id][-1]["content"],
                         **{name: samples[name][key]["completion"] for name in names}})
    return rows
