"""Hub cards for a finished run: huggingface_hub's ModelCard / DatasetCard with their metadata built by the
library (ModelCardData, DatasetCardData, EvalResult -> model-index), never hand-written YAML."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from lite_delta.eval_rows import SPLITS
from lite_delta.share.run import RunFacts, gguf_fields, public

TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"
PAPER = "*The Delta Learning Hypothesis: Preference Tuning on Weak Data can Yield Strong Gains* (Geng et al., 2025)"
RELATIONS = {"adapter": "adapter", "gguf": "quantized", "merged": "finetune"}
LIBRARIES = {"adapter": "peft", "gguf": "gguf", "merged": "transformers"}
TAGS = ["dpo", "lora", "delta-learning", "lite-delta"]


def model_card(part: str, facts: RunFacts, repos: dict[str, str], files: list[str]) -> ModelCard:
    """The card of one model repo (`part`: adapter, gguf or merged); `repos` maps every pushed part to its
    repo id (the cards link each other), `files` lists what the repo holds."""
    # the suite measured the student with this adapter: its results are the adapter's, not a merged file's
    results = eval_results(facts) if part == "adapter" else None
    data = ModelCardData(
        base_model=facts.base_model, base_model_relation=RELATIONS[part], library_name=LIBRARIES[part],
        pipeline_tag="text-generation", tags=TAGS + (["gguf"] if part == "gguf" else []),
        datasets=[repos["pairs"]] if "pairs" in repos else None, **facts.license,
        **({"model_name": repos[part], "eval_results": results} if results else {}))
    body = "\n\n".join(s for s in (
        f"# {repos[part].split('/')[-1]}",
        _intro(part, facts, repos),
        _usage(part, facts, repos, files),
        _training(facts, repos),
        _evaluation(facts, part),
        _files(files),
    ) if s)
    return ModelCard.from_template(data, template_str=TEMPLATE, body=body)


def dataset_card(facts: RunFacts, repos: dict[str, str], files: list[str], rows: int) -> DatasetCard:
    data = DatasetCardData(
        license=teachers_license(facts), task_categories=["text-generation"], language=None,
        size_categories=[size_category(rows)], pretty_name=f"{facts.name} preference pairs (lite-delta)",
        tags=["dpo", "preference", "delta-learning", "lite-delta", "synthetic"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}])
    body = "\n\n".join(s for s in (
        f"# {repos['pairs'].split('/')[-1]}",
        f"{rows} preference pairs (TRL's conversational format: `prompt`, `chosen`, `rejected` as message lists, "
        f"plus each side's model and score) made by lite-delta for delta learning, {PAPER}: "
        "DPO on pairs of weak answers teaches a student the direction of the difference between them. No judge "
        "labelled them." + (f" The student tuned on them: [{repos['adapter']}](https://huggingface.co/"
                            f"{repos['adapter']})." if "adapter" in repos else ""),
        _teachers(facts),
        _pairing(facts),
        _files(files),
    ) if s)
    return DatasetCard.from_template(data, template_str=TEMPLATE, body=body)


def eval_results(facts: RunFacts) -> list[EvalResult] | None:
    """The reduced suite's tuned scores (in %), one per task, from evaluate/suite/compare/compare.json."""
    if not facts.suite:
        return None
    results = []
    for row in facts.suite["tasks"]:
        split = SPLITS.get(row["task"])
        metric = facts.suite_metrics.get(row["task"], "score")
        results.append(EvalResult(
            task_type="text-generation", dataset_type=split.hub_id if split else row["task"],
            dataset_name=row["task"], dataset_config=split.config if split else None,
            dataset_split=split.split if split else None, metric_type=re.split(r"[ ,(]", metric)[0] or "score",
            metric_name=f"{metric}, tuned (base {100 * row['base']:.1f}; reduced suite, n={row['n']})",
            metric_value=round(100 * row["tuned"], 2), verified=False))
    return results or None


def size_category(rows: int) -> str:
    """The Hub's size_categories bucket for a row count."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < bound:
            return name
    return "1M<n<10M"


def teachers_license(facts: RunFacts) -> str | None:
    """The teachers' licence when every teacher's GGUF on this machine says the same one; else unknown."""
    found = set()
    for generation in facts.generations.values():
        model_file = generation.get("model_file")
        license_ = gguf_fields(Path(model_file)).get("general.license") if model_file else None
        if not license_:
            return None
        found.add(license_)
    return found.pop() if len(found) == 1 else None


def _teacher(ref) -> str:
    if isinstance(ref, dict) and "derive" in ref:
        return f"the chosen teacher requantized to {ref['derive']} by llama.cpp"
    if isinstance(ref, dict):
        return f"an OpenAI-compatible server ({ref.get('name') or ref.get('model') or 'endpoint'})"
    return f"`{public(ref)}`"


def _intro(part: str, facts: RunFacts, repos: dict[str, str]) -> str:
    what = {"adapter": f"A LoRA adapter (PEFT) for [{facts.base_model}](https://huggingface.co/{facts.base_model})",
            "gguf": f"[{facts.base_model}](https://huggingface.co/{facts.base_model}) with a DPO LoRA adapter, as GGUF "
                    "for llama.cpp, Ollama and LM Studio",
            "merged": f"[{facts.base_model}](https://huggingface.co/{facts.base_model}) with a DPO LoRA adapter merged "
                      "into its weights (16-bit transformers model)"}[part]
    t = facts.recipe.get("teachers") or {}
    pairs = (f"several answers of {_teacher(t['samples'])} per prompt ranked by "
             f"`{(facts.recipe.get('pairing') or {}).get('scorer')}`" if t.get("samples")
             else f"{_teacher(t.get('chosen'))}'s answers (chosen) against {_teacher(t.get('rejected'))}'s (rejected)")
    text = (f"{what}, trained by lite-delta: delta learning, {PAPER}. DPO on pairs of weak answers, {pairs}, with "
            "no judge: the student learns the direction of the difference between the two sides.")
    student = facts.recipe.get("student")
    if student and student != facts.base_model:
        text += (f"\n\nThe student trained was `{student}`; `base_model` names the model it holds "
                 f"({facts.base_model_source}).")
    others = [f"[{repos[p]}](https://huggingface.co/{'datasets/' if p == 'pairs' else ''}{repos[p]}) ({p})"
              for p in ("adapter", "gguf", "merged", "pairs") if p in repos and p != part]
    return text + (f"\n\nFrom the same run: {', '.join(others)}." if others else "")


def _usage(part: str, facts: RunFacts, repos: dict[str, str], files: list[str]) -> str:
    repo = repos[part]
    if part == "adapter":
        return ("## Use\n\n```python\nfrom peft import AutoPeftModelForCausalLM\n"
                "from transformers import AutoTokenizer\n\n"
                f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n```')
    if part == "merged":
        return ("## Use\n\n```python\nfrom transformers import pipeline\n\n"
                f'chat = pipeline("text-generation", model="{repo}")\n'
                'print(chat([{"role": "user", "content": "Hello!"}], max_new_tokens=128)[0]["generated_text"])\n```')
    quant = facts.export.get("quant")
    merged = next((f for f in files if quant and f.endswith(f"-{quant}.gguf")), None)
    adapter = next((f for f in files if f.endswith("-lora-adapter.gguf")), None)
    lines = ["## Use"]
    if merged:
        lines += [f"```sh\nollama run hf.co/{repo}:{quant}\nllama-cli -hf {repo}:{quant}\n```",
                  f"`{merged}` is the adapter merged into the student and quantized to {quant} by llama.cpp. "
                  "LM Studio lists it under the repo's name."]
    if adapter:
        lines.append(f"`{adapter}` is the GGUF LoRA adapter itself, for llama.cpp (`--lora {adapter}`) or an "
                     f"Ollama Modelfile (`ADAPTER ./{adapter}`) on a GGUF of {facts.base_model}; the run used "
                     f"`{facts.export.get('base')}`.")
    return "\n\n".join(lines)


def _training(facts: RunFacts, repos: dict[str, str]) -> str:
    train = facts.train.get("config") or (facts.recipe.get("train") or {})
    keys = ("loss", "beta", "learning_rate", "lr_scheduler", "max_steps", "batch_size", "grad_accum", "max_length",
            "lora_r", "lora_alpha", "lora_targets", "seed")
    rows = [f"| {k} | {train[k]} |" for k in keys if train.get(k) is not None]
    pairs = facts.stats.get("pairs") or (facts.train.get("pairs") or {}).get("rows")
    if pairs is not None:
        where = f" ([{repos['pairs']}](https://huggingface.co/datasets/{repos['pairs']}))" if "pairs" in repos else ""
        rows.append(f"| pairs | {pairs}{where} |")
    if facts.train.get("steps") is not None:
        rows.append(f"| steps, backend, device | {facts.train['steps']}, {facts.train.get('backend')}, "
                    f"{facts.train.get('device')} |")
    last = facts.train.get("last_log") or {}
    if "rewards/margins" in last:
        rows.append(f"| last step: loss, margin, accuracy | {last.get('loss', float('nan')):.3f}, "
                    f"{last['rewards/margins']:.2f}, {last.get('rewards/accuracies', float('nan')):.2f} |")
    if "health_warnings" in facts.train:
        rows.append(f"| training health | {'; '.join(facts.train['health_warnings']) or 'no warnings'} |")
    return "## Training\n\n| setting | value |\n|---|---|\n" + "\n".join(rows) if rows else ""


def _evaluation(facts: RunFacts, part: str) -> str:
    sections = []
    where = "" if part == "adapter" else (" (the student with the adapter, before merging"
                                          + (" and quantizing)" if part == "gguf" else ")"))
    if facts.suite:
        lines = [f"Reduced Tulu 3 suite, base student vs tuned{where}, same items, paired bootstrap 95% CI "
                 "(scores in %; a sample of items per task, not comparable 1:1 with the full suite):", "",
                 "| task | n | base | tuned | diff | 95% CI |", "|---|---|---|---|---|---|"]
        for r in facts.suite["tasks"]:
            lo, hi = r["ci95"]
            lines.append(f"| {r['task']} | {r['n']} | {100 * r['base']:.1f} | {100 * r['tuned']:.1f} | "
                         f"{100 * r['diff']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] |")
        m = facts.suite["macro_average"]
        lines.append(f"| macro average | | {100 * m['base']:.1f} | {100 * m['tuned']:.1f} | {100 * m['diff']:+.1f} | "
                     f"[{100 * m['ci95'][0]:+.1f}, {100 * m['ci95'][1]:+.1f}] |")
        sections.append("\n".join(lines))
    if facts.utility:
        u = facts.utility
        lines = [f"`{u['scorer']}` per answer on {u['n_prompts']} held-out prompts{where}, mean with bootstrap "
                 f"95% CI; rejected and chosen are the worst and best of the base student's {u['k']} samples per "
                 "prompt, as pairing picks them:", "", "| student | mean | 95% CI |", "|---|---|---|"]
        for name, bar in u["bars"].items():
            lines.append(f"| {name} | {bar['mean']:.2f} | [{bar['ci95'][0]:.2f}, {bar['ci95'][1]:.2f}] |")
        for key in ("tuned_minus_chosen", "tuned_minus_base"):
            if key in u:
                lines.append(f"\n{key.replace('_', ' ')}: {u[key]['diff']:+.2f} "
                             f"[{u[key]['ci95'][0]:+.2f}, {u[key]['ci95'][1]:+.2f}]")
        sections.append("\n".join(lines))
    return "## Evaluation\n\n" + "\n\n".join(sections) if sections else ""


def _teachers(facts: RunFacts) -> str:
    lines = ["## Teachers", ""]
    for role, g in facts.generations.items():
        settings = g.get("generation") or {}
        shown = ", ".join(f"{k} {settings[k]}" for k in ("temperature", "top_p", "max_tokens", "samples_per_prompt",
                                                          "seed") if k in settings)
        lines.append(f"- **{role}**: `{public(g.get('model'))}` ({shown}; {g.get('completed', '?')} answers, "
                     f"llama-cpp-python {g.get('llama_cpp_python', '?')})")
    if len(lines) == 2:
        t = facts.recipe.get("teachers") or {}
        lines += [f"- **{role}**: {_teacher(ref)}" for role, ref in t.items() if ref and role != "chat_template"]
    prompts = facts.recipe.get("prompts") or {}
    lines += ["", f"Prompts: `{public(prompts.get('source'))}` ({prompts.get('n') or 'all'} prompts, sampled "
                  f"{prompts.get('sample')}). Each teacher's settings, identity and chat template: "
                  "`generation/<role>/generation.json`."]
    license_ = teachers_license(facts)
    if license_:
        lines.append(f"\nLicence {license_}: the teachers' GGUF metadata; the prompts' own terms apply as well.")
    return "\n".join(lines)


def _pairing(facts: RunFacts) -> str:
    pairing = facts.recipe.get("pairing") or facts.stats.get("settings") or {}
    shown = ", ".join(f"{k} {v}" for k, v in pairing.items() if v is not None)
    how = ("chosen = the answer with the highest score of several samples of one prompt, rejected = the lowest"
           if pairing.get("mode") == "by_score" else "chosen = the stronger teacher's answer, rejected = the weaker's")
    lines = ["## How the pairs were made", "", f"{how} ({shown})."]
    filters = facts.stats.get("filters") or {}
    if filters:
        lines.append(f"\nOf {facts.stats.get('candidates')} candidates, {facts.stats.get('pairs')} pairs were kept; "
                     "removed: " + ", ".join(f"{k} {v}" for k, v in filters.items()) + ".")
    scorer = facts.stats.get("scorer")
    if scorer:
        lines.append(f"\nScorer `{scorer['name']}`: chosen mean {scorer['chosen_mean']:.2f}, rejected mean "
                     f"{scorer['rejected_mean']:.2f}, margin mean {scorer['margin_mean']:.2f}. Counts and length "
                     "distributions per side: `stats.json`.")
    return "\n".join(lines)


def _files(files: list[str]) -> str:
    return "## Files\n\n" + "\n".join(f"- `{f}`" for f in files) if files else ""
