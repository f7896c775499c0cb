"""`runs/NAME/report.md` and `report.html`: what the run made, how training went, whether it helped.

Built only from the files the stages wrote (stats.json, train_log.jsonl, train.json, the eval
summaries, manifest.json), so it can be rebuilt at any time with `lite-delta run --from report`.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from lite_delta.config import Recipe
from lite_delta.files import write_text
from lite_delta.layout import round_folders, trained_dir

PACKAGES = ("lite-delta", "torch", "transformers", "trl", "peft", "datasets", "llama-cpp-python", "unsloth",
            "bitsandbytes", "lm-eval")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _fmt(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def environment() -> dict:
    from lite_delta.environment import package_versions

    versions = package_versions(PACKAGES)
    env = {"python": platform.python_version(), "platform": platform.platform(), "versions": versions}
    try:
        import torch

        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
        env["torch_cuda"] = torch.version.cuda
    except ImportError:
        env["device"] = "unknown"
    try:
        import llama_cpp

        env["llama_cpp_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    except ImportError:
        env["llama_cpp_gpu_offload"] = None
    return env


def training_chart(log_path: Path, path: Path) -> bool:
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()] if log_path.is_file() else []
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in records if "loss" in r]
    held = [r for r in records if "eval_loss" in r]  # held-out pairs (train.eval_fraction)
    steps, held_steps = [r["step"] for r in trained], [r["step"] for r in held]
    records = trained
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r.get("loss") for r in records], marker=".", label="training pairs")
    if held:
        axes[0].plot(held_steps, [r["eval_loss"] for r in held], marker="o", ls="--", label="held-out pairs")
    axes[0].axhline(0.6931, color="grey", lw=0.8, ls="--", label="ln 2 (nothing learned)")
    axes[0].set_title("DPO loss")
    axes[0].legend(fontsize=8)
    for key, label in (("rewards/chosen", "chosen"), ("rewards/rejected", "rejected"), ("rewards/margins", "margin")):
        axes[1].plot(steps, [r.get(key) for r in records], marker=".", label=label)
    if held:
        axes[1].plot(held_steps, [r.get("eval_rewards/margins") for r in held], marker="o", ls="--", color="black",
                     label="held-out margin")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_title("implicit rewards")
    axes[1].legend(fontsize=8)
    axes[2].plot(steps, [r.get("rewards/accuracies") for r in records], marker=".", label="training pairs")
    if held:
        axes[2].plot(held_steps, [r.get("eval_rewards/accuracies") for r in held], marker="o", ls="--",
                     color="black", label="held-out pairs")
        axes[2].legend(fontsize=8)
    axes[2].set_ylim(-0.05, 1.05)
    axes[2].set_title("reward accuracy (chosen > rejected)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def pairs_section(run_dir: Path) -> list[str]:
    stats = _read_json(run_dir / "pairs" / "stats.json")
    if not stats:
        return []
    s = stats["scorer"]
    dropped = ", ".join(f"{k} {v}" for k, v in stats["filters"].items() if v) or "none"
    lines = ["## Pairs", "",
             f"{stats['pairs']} pairs from {stats['candidates']} candidates ({stats['mode']}); filtered out: {dropped}.", ""]
    contrast = stats.get("contrast")
    if contrast:
        kinds = ", ".join(f"{kind} {n}" for kind, n in contrast["kinds"].items())
        lines += [f"{contrast['pairs']} of them are contrast pairs, a chosen answer against a degenerate copy of "
                  f"itself ({kinds}); the table is the {stats['pairs'] - contrast['pairs']} sampled pairs'.", ""]
    lines += ["| | chosen | rejected |", "|---|---|---|"]
    for side_key, label in (("completion_tokens", "answer tokens (mean)"), ("chars", "answer characters (mean)")):
        lines.append(f"| {label} | {_fmt(stats['chosen'][side_key].get('mean'), 1)} | "
                     f"{_fmt(stats['rejected'][side_key].get('mean'), 1)} |")
    if s.get("chosen_mean") is not None:
        lines.append(f"| {s['name']} (mean) | {_fmt(s['chosen_mean'])} | {_fmt(s['rejected_mean'])} |")
    return lines + [""]


def _loss_name(cfg: dict) -> str:
    """`sigmoid_norm`, or a combination as TRL weighs it: `1 x sigmoid_norm + 0.5 x sft`."""
    losses = cfg["loss"] if isinstance(cfg["loss"], list) else [cfg["loss"]]
    if len(losses) == 1:
        return losses[0]
    weights = cfg.get("loss_weights") or [1.0] * len(losses)
    return " + ".join(f"{w:g} × {name}" for w, name in zip(weights, losses))


def training_section(run_dir: Path, figures: Path) -> list[str]:
    train_dir = trained_dir(run_dir)
    summary = _read_json(train_dir / "train.json")
    if not summary:
        return []
    cfg, last = summary["config"], summary.get("last_log") or {}
    lines = ["## Training", "",
             f"{summary['student']} — backend {summary['backend']}, {summary['device']}, {summary['precision']}; "
             f"loss {_loss_name(cfg)}, β {cfg['beta']}, lr {cfg['learning_rate']}, LoRA r {cfg['lora_r']}, "
             f"{summary['steps']} steps in {summary['seconds']:.0f} s"
             + (f", {summary['tokens_per_s_mean']:.0f} tokens/s" if summary.get("tokens_per_s_mean") else "") + ".",
             "",
             f"Last step: loss {_fmt(last.get('loss'), 3)}, margin {_fmt(last.get('rewards/margins'), 3)}, "
             f"accuracy {_fmt(last.get('rewards/accuracies'))}, chosen reward {_fmt(last.get('rewards/chosen'), 3)}, "
             f"rejected reward {_fmt(last.get('rewards/rejected'), 3)}.", ""]
    lines += rounds_lines(run_dir) + held_out_lines(summary) + probe_lines(summary)
    if training_chart(train_dir / "train_log.jsonl", figures / "training.png"):
        lines += ["![training curves](figures/training.png)", ""]
    warnings = summary.get("health_warnings") or []
    lines += ["**Training health:** " + ("no warnings." if not warnings else ""), ""]
    lines += [f"- {w['message']}" for w in warnings]
    if summary.get("contrast_pairs"):
        lines += ([""] if warnings else []) + [f"{summary['contrast_pairs']} of the {summary['pairs']['rows']} "
                      "training pairs are contrast pairs (a chosen answer against a degenerate copy of itself), whose "
                      "rejected side is meant to fall far: the reward rules (runaway margin, rejected plunge, chosen "
                      "sunk, both down) read batch means over both kinds and are not applied; the greedy probe "
                      "(train.probe_prompts) and the coherence figures watch for a break."]
    lines += ["", f"Chat template: from the {summary['chat_template']['source']} (sha256 "
                  f"{summary['chat_template']['sha256']}); one rendered pair: `train/rendered_pair.txt`.", ""]
    return lines


def rounds_lines(run_dir: Path) -> list[str]:
    """On-policy rounds (rounds.n): each round's pairs, how they were made, its steps and health; the figures
    above are the last round's."""
    rows = []
    for r, folder in enumerate(round_folders(run_dir), 1):
        stats, summary = _read_json(folder / "pairs" / "stats.json"), _read_json(folder / "train" / "train.json")
        if not stats or not summary:
            continue
        s, last = stats["scorer"], summary.get("last_log") or {}
        warnings = ", ".join(w["kind"] for w in summary.get("health_warnings") or []) or "quiet"
        source = "the teachers' answers" if r == 1 else f"the student's own answers after round {r - 1}"
        kept = (summary.get("selected") or {}).get("step")  # select: probe / best_eval keep an earlier step
        steps = f"{summary['steps']} (kept {kept})" if kept is not None and kept != summary["steps"] else summary["steps"]
        rows.append(f"| {r} | {source} | {stats['pairs']} | {_fmt(s.get('chosen_mean'))} / "
                    f"{_fmt(s.get('rejected_mean'))} | {steps} | {_fmt(last.get('loss'), 3)} | {warnings} |")
    if len(rows) < 2:
        return []
    return ["On-policy rounds (`rounds`): each later round's pairs are the student's own answers, sampled with the "
            "adapter of the round before, and its training goes on from that adapter (its reference). The figures "
            "above are the last round's.", "",
            f"| round | pairs from | pairs | {_pair_scorer(run_dir)} chosen / rejected | steps | last-step loss | health |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def _pair_scorer(run_dir: Path) -> str:
    stats = _read_json(run_dir / "pairs" / "stats.json") or {}
    return stats.get("scorer", {}).get("name", "score")


def probe_lines(summary: dict) -> list[str]:
    """The greedy probe (train.probe_prompts): how many of its greedy answers the degenerate rule flagged, when."""
    probe = summary.get("probe")
    if not probe or not probe.get("steps"):
        return []
    seen = ", ".join(f"{p['degenerate']} at step {p['step']}" for p in probe["steps"])
    line = (f"Greedy probe ({probe['prompts']} prompts, answers in `train/{probe['file']}`): degenerate answers "
            f"{_fmt(probe.get('reference_degenerate'))} with the adapter off, then {seen}.")
    selected = summary.get("selected") or {}
    if selected.get("stopped_at") is not None:
        line += (f" Training stopped at step {selected['stopped_at']}, where they broke, and the adapter is step "
                 f"{selected['step']}'s (`select: probe`).")
    return [line, ""]


def held_out_lines(summary: dict) -> list[str]:
    """Held-out pairs (train.eval_fraction) and which step's adapter was kept (train.select)."""
    held, selected = summary.get("held_out"), summary.get("selected") or {}
    if not held:
        return []
    last, best = held.get("last") or {}, held.get("best") or {}
    lines = [f"Held-out pairs: {held['pairs']} ({held['prompts']} prompts, {held['fraction']:.0%} of them, kept out "
             f"of training), evaluated {held['evaluations']} times. Last evaluation (step {last.get('step', '—')}): "
             f"loss {_fmt(last.get('eval_loss'), 3)}, margin {_fmt(last.get('eval_rewards/margins'), 3)}, accuracy "
             f"{_fmt(last.get('eval_rewards/accuracies'))}; lowest held-out loss {_fmt(best.get('eval_loss'), 3)} "
             f"at step {best.get('step', '—')}."]
    if selected.get("by", "last") != "last":
        last_step = selected["step"] == summary.get("steps")
        lines.append(f"The adapter is step {selected['step']}'s ({selected['by']})"
                     + (": the last step's, the held-out loss was lowest there." if last_step
                        else ", not the last step's."))
    return [" ".join(lines), ""]


def _sft_section(run_dir: Path) -> list[str]:
    summary = _read_json(run_dir / "sft" / "sft.json")
    if not summary:
        return []
    last = summary.get("last_log") or {}
    return ["## The SFT contrast", "",
            f"SFT on the chosen answers of the same {summary['pairs']['rows']} pairs, with the DPO run's LoRA settings, "
            f"learning rate, schedule, batch and seed: {summary['steps']} steps in {summary['seconds']:.0f} s "
            f"({summary['passes_over_chosen']} passes over the chosen answers, {summary['chosen_tokens_per_pass']} "
            f"answer tokens each), last loss {_fmt(last.get('loss'), 3)}. Adapter: `sft/adapter`.", ""]


def greedy_breaks(run_dir: Path) -> list[str]:
    """The export's greedy quick-check answers (tuned, merged) that the coherence rule calls degenerate, as
    "merged (few_words)": sampled answers can pass the coherence bounds while greedy decoding loops."""
    from lite_delta.degenerate import degenerate_reason

    sample = (_read_json(run_dir / "export" / "export.json") or {}).get("sample") or {}
    return [f"{name} ({why})" for name in ("tuned", "merged")
            if isinstance(sample.get(name), str) and (why := degenerate_reason(sample[name]))]


def utility_section(run_dir: Path) -> list[str]:
    summary = _read_json(run_dir / "evaluate" / "utility" / "summary.json")
    if not summary:
        return []
    name = summary.get("scorer") or "utility"
    samples = summary.get("samples_per_prompt") or {}
    lines = [f"## Held-out utility: {name}", "",
             f"Mean {name} per answer on {summary['n_prompts']} held-out prompts "
             f"({samples.get('base', '?')} samples per prompt from the base student, {samples.get('tuned', '?')} from the "
             "tuned one, same engine, template and seeds), with bootstrap 95% confidence intervals over prompts. "
             "Chosen and rejected are, per prompt, the best and worst of the base student's samples: what the pair "
             "stage picks.", "",
             "| | mean | 95% CI |", "|---|---|---|"]
    contrast = "sft" in summary["bars"]
    rows = (("base", "base student"), ("rejected", "rejected (worst of k)"), ("chosen", "chosen (best of k)"),
            *((("sft", "SFT on the chosen answers"),) if contrast else ()),
            ("tuned", "DPO on the pairs (tuned student)" if contrast else "tuned student"))
    for key, label in rows:
        bar = summary["bars"][key]
        lines.append(f"| {label} | {_fmt(bar['mean'])} | [{_fmt(bar['ci95'][0])}, {_fmt(bar['ci95'][1])}] |")

    def diff(key: str) -> str:
        d = summary[key]
        return f"{d['diff']:+.2f} (paired 95% CI [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}])"

    coherence = summary.get("coherence")
    greedy = greedy_breaks(run_dir) if summary.get("target_met") else []
    if summary.get("target_met") and coherence and not summary.get("coherent"):
        verdict = ("**not met**: the tuned student is above the chosen answers by the count, but its answers are "
                   "not coherent (see Coherence below)")
    elif greedy:
        verdict = ("**not met**: the tuned student is above the chosen answers and its sampled answers are coherent, "
                   f"but greedy decoding breaks it: the quick check's {' and '.join(greedy)} "
                   f"{'answers are' if len(greedy) > 1 else 'answer is'} degenerate "
                   "(see Quick check below)")
    else:
        verdict = "**met**" if summary.get("target_met") else "**not met**"
    lines += ["", f"Tuned − chosen: {diff('tuned_minus_chosen')}; tuned − base: {diff('tuned_minus_base')}. "
                  "Target (the tuned student above the chosen answers, CI excluding 0"
                  + (", and as coherent as the base student" if coherence else "") + f"): {verdict}.", ""]
    if contrast:
        lines += [f"The contrast (same pairs, LoRA settings, steps and seed; SFT imitates the chosen answers and never "
                  f"sees the rejected ones): DPO − SFT: {diff('tuned_minus_sft')}; SFT − chosen: "
                  f"{diff('sft_minus_chosen')}; SFT − base: {diff('sft_minus_base')}. The paper's picture is "
                  "SFT pulled toward the chosen answers' level and DPO pushed past both.", ""]
    lines += [f"- warning: {w}" for w in summary.get("warnings", [])]
    lines += _coherence_lines(summary, rows) if coherence else []
    lines += ["![utility](figures/utility.png)", ""]
    return lines + _examples_lines(summary.get("examples") or [], contrast)


def _coherence_lines(summary: dict, rows: tuple) -> list[str]:
    c = summary["coherence"]
    b = c["bounds"]
    lines = ["### Coherence: is each student still an assistant?", "",
             "Two figures the utility does not see, over the same answers. **Degenerate**: the share of answers that "
             "have fewer than 5 real words, one line repeated through most of the answer, mostly repeated phrases, or "
             "mostly symbols. **Relevance**: how much the prompt explains the answer, in nats per token under the base "
             "student (log p(answer | prompt) − log p(answer | an empty prompt)); a helpful answer scores well above "
             "0, loops of `1.1.1`, word salad and off-topic text near or below 0. Differences from the base student "
             f"are paired over prompts.{_judge_words(c.get('judge'))}", "",
             "| | degenerate | − base [95% CI] | relevance | − base [95% CI] |", "|---|---|---|---|---|"]

    def cell(figure: str, key: str) -> tuple[str, str]:
        bar = c[figure][key]
        d = c[f"{figure}_minus_base"].get(key)
        return (f"{bar['mean']:.2f} [{bar['ci95'][0]:.2f}, {bar['ci95'][1]:.2f}]",
                "–" if d is None else f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]")

    for key, label in rows:
        (deg, deg_d), (rel, rel_d) = cell("degenerate", key), cell("relevance", key)
        lines.append(f"| {label} | {deg} | {deg_d} | {rel} | {rel_d} |")
    tuned_ok = c["coherent"].get("tuned")
    lines += ["", f"Bounds for a tuned student (paired point estimates): degenerate share at most the base's "
                  f"+{b['degenerate_minus_base_at_most']:.2f}, relevance at least the base's "
                  f"{b['relevance_minus_base_at_least']:+.2f} nats/token. The DPO student is "
                  + ("**within** them." if tuned_ok else "**outside** them: it has drifted from a working assistant "
                     "(over-trained: lower the learning rate or the steps, see the training health below).")]
    if "sft" in c["coherent"]:
        lines[-1] += f" The SFT student is {'within' if c['coherent']['sft'] else '**outside**'} them."
    return lines + [""]


def _judge_words(judge: dict | None) -> str:
    """The relevance judge in a few words: its engine and, through llama.cpp, the weights it read."""
    if not judge:
        return ""
    weights = f", {judge['weights']}" if judge.get("weights") else ""
    return f" Judge: the base student through {judge['engine']}{weights}."


def _examples_lines(examples: list[dict], contrast: bool) -> list[str]:
    if not examples:
        return []
    names = [("base", "base"), *((("sft", "SFT"),) if contrast else ()), ("tuned", "DPO" if contrast else "tuned")]
    lines = ["### Answers side by side", "",
             "The first held-out prompts, sample 0 of each student (same seed), as they wrote them:", ""]
    for example in examples:
        lines += [f"**Prompt:** {' '.join(example['prompt'].split())}", ""]
        for key, label in names:
            text = example.get(key, "")
            lines += [f"*{label}:*", "", *("> " + line for line in text.splitlines() or [""]), ""]
    return lines


def _suite_section(run_dir: Path) -> list[str]:
    compare_md = run_dir / "evaluate" / "suite" / "compare" / "compare.md"
    if not compare_md.is_file():
        return []
    body = compare_md.read_text(encoding="utf-8").strip().splitlines()
    body = [("###" + line[1:] if line.startswith("# ") else line) for line in body]
    return ["## Reduced Tulu 3 evaluation: base vs tuned", "", *body, "", "![suite](figures/suite.png)", ""]


def _export_section(run_dir: Path) -> list[str]:
    """The export's own README (files, the exact ollama / llama.cpp commands, the quick generation), one level down."""
    handoff = run_dir / "export" / "README.md"
    if not handoff.is_file():
        return []
    body = handoff.read_text(encoding="utf-8").strip().splitlines()
    lines = ["## The tuned student in llama.cpp and Ollama", "", "In `export/`:", ""]
    lines += [("#" + line if line.startswith("## ") else line) for line in body if not line.startswith("# ")]
    return lines + [""]


def _meter_section(run_dir: Path) -> list[str]:
    """The delta meter's table and verdict (meter/meter.md), as the meter stage wrote it."""
    md = run_dir / "meter" / "meter.md"
    if not md.is_file():
        return []
    return ["## Teachers' delta (meter, before generating)", "", md.read_text(encoding="utf-8").rstrip(), ""]


def _stages_section(run_dir: Path) -> list[str]:
    manifest = _read_json(run_dir / "manifest.json") or {}
    stages = manifest.get("stages", {})
    if not stages:
        return []
    lines = ["## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    for name, record in stages.items():
        if name == "report":
            continue
        lines.append(f"| {name} | {record.get('status', '–')} | {_fmt(record.get('seconds'), 0)} |")
    templates = manifest.get("chat_templates") or {}
    if templates:
        lines += ["", "Chat templates (only messages cross between models, never rendered text):", ""]
        lines += [f"- {role}: `{t['sha256']}` ({t['model']})" for role, t in templates.items()]
    return lines + [""]


def _environment_section(env: dict) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    build = {True: "with GPU offload (CUDA)", False: "CPU only", None: "not installed"}[env["llama_cpp_gpu_offload"]]
    return ["## Environment", "", f"- device: {env['device']}; torch CUDA: {env.get('torch_cuda') or 'none'}",
            f"- llama-cpp-python build: {build}", f"- Python {env['python']} on {env['platform']}",
            f"- {versions}", ""]


def write_report(recipe: Recipe, run_dir: Path) -> list[Path]:
    figures = run_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    env = environment()
    lines = [f"# lite-delta run: {recipe.name}", "",
             "Delta learning (Geng et al., 2025): DPO on pairs of two weak answers, chosen ≻ rejected.", ""]
    lines += utility_section(run_dir)
    lines += _suite_section(run_dir)
    lines += _export_section(run_dir)
    lines += _meter_section(run_dir)
    lines += pairs_section(run_dir)
    lines += training_section(run_dir, figures)
    lines += _sft_section(run_dir) if recipe.contrast.sft else []
    lines += _stages_section(run_dir)
    lines += _environment_section(env)
    md = "\n".join(lines) + "\n"
    write_text(run_dir / "report.md", md)
    write_text(run_dir / "report.html", to_html(md, f"lite-delta: {recipe.name}"))
    return [run_dir / "report.md", run_dir / "report.html"]


SAFE_SCHEMES = ("", "http", "https", "mailto")  # link and image targets a report may carry (figures: relative)


def to_html(md: str, title: str) -> str:
    """The report as HTML, where everything a model or a prompt file wrote stays text: raw HTML in the
    Markdown is escaped, not passed through, and links or images with any other scheme (javascript:,
    data:, ...) lose their target."""
    import html
    import re

    import markdown
    from markdown.treeprocessors import Treeprocessor

    class DropUnsafeTargets(Treeprocessor):
        def run(self, root):
            for element in root.iter():
                for attribute in ("href", "src"):
                    target = re.sub(r"[\x00-\x20]", "", element.get(attribute) or "").lower()
                    scheme = target.split(":", 1)[0] if re.match(r"^[a-z][a-z0-9+.-]*:", target) else ""
                    if element.get(attribute) is not None and scheme not in SAFE_SCHEMES:
                        del element.attrib[attribute]

    converter = markdown.Markdown(extensions=["tables"])
    converter.preprocessors.deregister("html_block")  # raw HTML blocks become escaped text
    converter.inlinePatterns.deregister("html")  # and so do inline tags
    converter.treeprocessors.register(DropUnsafeTargets(converter), "drop_unsafe_targets", 0)
    body = converter.convert(md)
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}img{max-width:100%}"
             "code{background:#f4f4f4;padding:0 .2em}")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")
