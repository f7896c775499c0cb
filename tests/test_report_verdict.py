"""The report's target verdict: sampled answers past the chosen ones and coherent are not enough when the greedy
quick check (the answer a reader sees first) is degenerate."""

import json

import numpy as np

from lite_delta.evaluate.coherence import per_prompt
from lite_delta.evaluate.utility import compare_utility
from lite_delta.report import greedy_breaks, utility_section

LIST = ("1. Water the plants deeply the day before you leave.\n2. Move them away from hot sunny windows.\n"
        "3. Set up a wick with a glass of water for thirsty pots.\n4. Ask a neighbour to check on them once.")
LOOP = "1. **1.1.1.1.1**\n\n" + "1.1.1.1.1.1\n\n" * 30


def _utility(means, scores):
    return {"scorer": "list_items", "settings": {"samples_per_prompt": 2, "k": 2},
            "per_prompt": {f"p{i}": {"mean": m, "best_of_k": max(s), "worst_of_k": min(s), "scores": s}
                           for i, (m, s) in enumerate(zip(means, scores))}}


def _run(tmp_path, name: str, tuned_answer: str, merged_answer: str):
    """A finished run's utility summary (the tuned student past chosen and coherent) and export quick check."""
    n, rng = 24, np.random.default_rng(0)
    base_scores = [[float(rng.integers(0, 3)), float(rng.integers(2, 5))] for _ in range(n)]
    base, tuned = _utility([sum(s) / 2 for s in base_scores], base_scores), _utility([6.0] * n, [[6.0, 6.0]] * n)
    fig = {f"p{i}:{s}": {"degenerate": None, "relevance": 1.0} for i in range(n) for s in range(2)}
    summary = compare_utility(base, tuned, coherence={"base": per_prompt(base, fig, 2), "tuned": per_prompt(tuned, fig, 2)})
    assert summary["target_met"] and summary["coherent"]
    run = tmp_path / name
    (run / "evaluate" / "utility").mkdir(parents=True)
    (run / "export").mkdir()
    (run / "evaluate" / "utility" / "summary.json").write_text(json.dumps(summary))
    (run / "export" / "export.json").write_text(json.dumps(
        {"sample": {"prompt": "How can I keep my houseplants alive while I'm away?", "base": LIST,
                    "tuned": tuned_answer, "merged": merged_answer}}))
    return run


def _verdict(run) -> str:
    return next(line for line in utility_section(run) if "Target (" in line)


def test_a_degenerate_greedy_quick_check_turns_met_into_not_met(tmp_path):
    healthy = _run(tmp_path, "healthy", LIST, LIST)
    assert greedy_breaks(healthy) == []
    assert _verdict(healthy).endswith("**met**.")

    merged_loops = _run(tmp_path, "merged", LIST, LOOP)
    assert greedy_breaks(merged_loops) == ["merged (few_words)"]
    verdict = _verdict(merged_loops)
    assert "**not met**" in verdict and "merged (few_words) answer is degenerate" in verdict

    both = _run(tmp_path, "both", LOOP, LOOP)
    assert "tuned (few_words) and merged (few_words) answers are degenerate" in _verdict(both)


def test_a_run_without_an_export_is_judged_on_its_sampled_answers(tmp_path):
    run = _run(tmp_path, "no-export", LIST, LIST)
    (run / "export" / "export.json").unlink()
    assert greedy_breaks(run) == [] and _verdict(run).endswith("**met**.")


def test_the_coherence_section_names_the_relevance_judge_when_the_run_recorded_it(tmp_path):
    run = _run(tmp_path, "judged", LIST, LIST)
    path = run / "evaluate" / "utility" / "summary.json"
    intro = lambda: next(line for line in utility_section(run) if line.startswith("Two figures"))  # noqa: E731
    assert "Judge:" not in intro()  # a run from before the judge was recorded
    summary = json.loads(path.read_text())
    summary["coherence"]["judge"] = {"model": "pkg://m.gguf", "engine": "llama.cpp",
                                     "weights": "Q4_1 read as its Q8_0 requantization"}
    path.write_text(json.dumps(summary))
    assert intro().endswith("Judge: the base student through llama.cpp, Q4_1 read as its Q8_0 requantization.")
