"""Coherence beside the utility: the degenerate-answer rule (pure), relevance under the real SmolLM2 student, and
the summary's coherence figures, bounds and chart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lite_delta.evaluate.coherence import coherence_eval, degenerate_reason, per_prompt, relevance_scores
from lite_delta.evaluate.utility import compare_utility, side_by_side, utility_chart
from lite_delta.models.derive import batched_gguf

HEALTHY = ("While you're away on vacation, it's a great idea to keep your indoor plants alive. Here's how:\n\n"
           "1. **Water**: Water your plants thoroughly the day before you leave.\n"
           "2. **Light**: Move them away from a hot window so they dry out more slowly.")
# verbatim from the over-trained demo student's held-out answers (issue 26)
COLLAPSED = ["1. **1.1.1.1.1**\n\n1.1.1.1.1\n\n1.1.1.1.1\n\n1.1.1.1.1 ",
             "1. **1. **1.1\n\n1. **2. **2.1\n\n1. **3. **3.1",
             "Anwesfer:\n\n1. \n2.\n3. \n4.\n5.\n\nDemonstratives:\n\n1.\n2.\n3.",
             "1.1 * 菱� el\" * 8\n2.0 * 4 * 1 * 1 * 10 * 4 * 2"]
SALAD = "Zin akong:\n\nYunga konggoy, kung gamitin habayong konggo emplek tanga bolo"
OFF_TOPIC = "The French Revolution began in 1789 with the storming of the Bastille and ended the monarchy."


@pytest.mark.parametrize("text, reason", [
    (HEALTHY, None),
    ("Water them well before you go, and ask a friend to check.", None),
    ("", "few_words"),
    ("1.\n2.\n3.", "few_words"),
    (COLLAPSED[0], "few_words"),
    (COLLAPSED[1], "few_words"),
    (COLLAPSED[2], "few_words"),
    (COLLAPSED[3], "few_words"),
    ("Water the plants.\n" * 6, "repeated_lines"),
    ("- Water the plants today\n" * 3 + "- Check the soil\n", "repeated_lines"),
    ("keep the plants watered " * 10, "repeated_phrases"),
    ("2 * 3 = 6 ; 4 * 5 = 20 ; 7 + 8 = 15 ; the answer is here now", "symbols"),
    ("A recipe: 2 cups flour, 1 tsp salt, 3 eggs, and one cup of warm milk, mixed well.", None),
])
def test_the_degenerate_rule(text, reason):
    assert degenerate_reason(text) == reason


@pytest.fixture(scope="module")
def judges(smollm2_gguf, smollm2_student, tmp_path_factory):
    """The base student as both engines see it: llama.cpp on the demo's GGUF, transformers on its conversion."""
    from lite_delta.evaluate.engines import LlamaCppEngine, TransformersEngine

    judge, weights = batched_gguf(str(smollm2_gguf), tmp_path_factory.mktemp("derived"))
    engines = {"llama.cpp": LlamaCppEngine(str(smollm2_gguf), parallel=2),
               "transformers": TransformersEngine(smollm2_student, cache_dir=tmp_path_factory.mktemp("judge")),
               "judge": LlamaCppEngine(judge, parallel=2)}
    engines["judge"].weights = weights
    yield engines
    for engine in engines.values():
        engine.close()


def test_relevance_under_the_real_student_separates_a_working_answer_from_collapse(judges):
    messages = [{"role": "user", "content": "How can I keep my houseplants alive while I'm away on vacation?"}]
    texts = [HEALTHY, *COLLAPSED[:2], SALAD, OFF_TOPIC, ""]
    by_engine = {}
    for name, engine in judges.items():
        scores = relevance_scores(engine, [(messages, t) for t in texts], progress=False)
        healthy, *bad = scores[:5]
        assert healthy > 0.5, (name, scores)
        assert all(s < 0.3 for s in bad) and max(bad) < healthy - 0.5, (name, scores)
        assert scores[5] == 0.0  # an empty answer: the prompt explains nothing of it
        by_engine[name] = scores
    # the same weights (the GGUF's Q4_1, dequantized for transformers; llama.cpp also quantizes activations to
    # 8 bits in its matmuls): the engines agree to ~0.1 nats/token, far inside the 0.5 that separates the answers
    assert by_engine["llama.cpp"] == pytest.approx(by_engine["transformers"], abs=0.1)
    # the judge the pipeline opens on a CPU: those Q4_1 weights requantized to Q8_0 (batched_gguf), which agree
    # with the Q4_1 file as closely as transformers' exact dequantization does
    assert by_engine["judge"] == pytest.approx(by_engine["llama.cpp"], abs=0.1)
    # grouping by prompt does not change a score: one answer alone scores as it did among others
    alone = relevance_scores(judges["llama.cpp"], [(messages, HEALTHY)], progress=False)
    assert alone[0] == pytest.approx(by_engine["llama.cpp"][0], abs=1e-4)


def test_a_q4_1_student_is_evaluated_and_judged_through_its_q8_0_copy_on_a_cpu_other_types_as_they_are(
        judges, smollm2_gguf, tmp_path):
    import gguf

    from lite_delta.inference.engine import gpu_offload_available

    def file_type(path):  # as the gguf package reads the header, not as lite-delta does
        return int(gguf.GGUFReader(str(path)).fields["general.file_type"].contents())

    assert file_type(smollm2_gguf) == gguf.LlamaFileType.MOSTLY_Q4_1
    copy = judges["judge"].path
    if gpu_offload_available():  # llama.cpp's GPU kernels read Q4_1 as fast: no copy
        assert copy == smollm2_gguf and judges["judge"].weights == "Q4_1"
        return
    assert copy != smollm2_gguf and file_type(copy) == gguf.LlamaFileType.MOSTLY_Q8_0
    assert judges["judge"].weights == "Q4_1 read as its Q8_0 requantization"
    # the utility evaluation opens the student the same way, the copy made beside its exported adapters
    from lite_delta.config import load_recipe
    from lite_delta.evaluate.utility import open_engine
    from lite_delta.pipeline import default_recipe_path

    cfg = load_recipe(default_recipe_path(), [f"student={smollm2_gguf}"]).evaluate.utility
    engine = open_engine(cfg, str(smollm2_gguf), None, tmp_path / "model")
    try:
        assert engine.path.parent == tmp_path / "model" and file_type(engine.path) == gguf.LlamaFileType.MOSTLY_Q8_0
    finally:
        engine.close()
    # a type with a fast path (the copy itself, Q8_0) is its own judge: nothing more is written
    again, weights = batched_gguf(str(copy), tmp_path / "cache")
    assert (again, weights) == (str(copy), "Q8_0") and not (tmp_path / "cache").exists()


def _samples(folder, texts_by_prompt: dict[str, list[str]]):
    folder.mkdir(parents=True)
    with open(folder / "samples.jsonl", "w") as f:
        for pid, texts in texts_by_prompt.items():
            for s, text in enumerate(texts):
                f.write(json.dumps({"key": f"{pid}:{s}", "prompt_id": pid, "sample": s, "completion": text}) + "\n")


def test_coherence_eval_writes_per_answer_figures_and_reuses_them(judges, tmp_path):
    messages = {"p0": [{"role": "user", "content": "How do I keep houseplants alive on vacation?"}],
                "p1": [{"role": "user", "content": "What should I pack for a beach trip?"}]}
    _samples(tmp_path / "base", {"p0": [HEALTHY, "Water them well before you leave home."],
                                 "p1": ["Sunscreen, a towel, water and a hat.", "Pack light clothes and a hat."]})
    _samples(tmp_path / "tuned", {"p0": [COLLAPSED[0], HEALTHY], "p1": [SALAD, "Sunscreen, a towel, water and a hat."]})
    runs = {"base": tmp_path / "base", "tuned": tmp_path / "tuned"}
    opened = []

    def open_judge():
        opened.append(1)
        return _Unclosed(judges["llama.cpp"])

    judge = {"model": "smollm2", "engine": "llama.cpp"}
    result = coherence_eval(runs, messages, judge=judge, open_judge=open_judge, out=tmp_path, progress=False)
    base, tuned = result["per_sample"]["base"], result["per_sample"]["tuned"]
    assert tuned["p0:0"]["degenerate"] == "few_words" and tuned["p0:1"]["degenerate"] is None
    # the same answer to the same prompt scores the same, whoever wrote it
    assert tuned["p0:1"]["relevance"] == pytest.approx(base["p0:0"]["relevance"], abs=1e-4)
    assert tuned["p1:1"]["relevance"] == pytest.approx(base["p1:0"]["relevance"], abs=1e-4)
    assert tuned["p0:1"]["relevance"] > 0.5 > 0.3 > tuned["p1:0"]["relevance"]
    # the same answers and judge: read back, no engine opened
    assert coherence_eval(runs, messages, judge=judge, open_judge=open_judge, out=tmp_path, progress=False) == result
    assert opened == [1]
    # another judge: computed again
    coherence_eval(runs, messages, judge={**judge, "model": "other"}, open_judge=open_judge, out=tmp_path,
                   progress=False)
    assert opened == [1, 1]
    rows = side_by_side(tmp_path, ["base", "tuned"], messages)
    assert rows[0] == {"prompt_id": "p0", "prompt": messages["p0"][0]["content"], "base": HEALTHY,
                       "tuned": COLLAPSED[0]}


class _Unclosed:
    """The module's shared engine, which coherence_eval may close as if it had opened it."""

    def __init__(self, engine):
        self.engine = engine

    def loglikelihood(self, *args, **kwargs):
        return self.engine.loglikelihood(*args, **kwargs)

    def close(self):
        pass


def _utility(means: list[float], scores: list[list[float]]) -> dict:
    return {"scorer": "list_items", "settings": {"samples_per_prompt": 2, "k": 2},
            "per_prompt": {f"p{i}": {"mean": m, "best_of_k": max(s), "worst_of_k": min(s), "scores": s}
                           for i, (m, s) in enumerate(zip(means, scores))}}


def _figures(n: int, degenerate: list[bool], relevance: list[float]) -> dict:
    return {f"p{i}:{s}": {"degenerate": "few_words" if degenerate[s] else None, "relevance": relevance[s]}
            for i in range(n) for s in range(2)}


def test_the_summary_flags_a_collapsed_student_and_passes_a_healthy_one(tmp_path):
    n = 24
    rng = np.random.default_rng(0)
    base_scores = [[float(rng.integers(0, 3)), float(rng.integers(2, 5))] for _ in range(n)]
    base = _utility([sum(s) / 2 for s in base_scores], base_scores)
    tuned = _utility([6.0] * n, [[6.0, 6.0]] * n)
    base_fig = per_prompt(base, _figures(n, [False, False], [0.9, 1.1]), k=2)
    assert base_fig["p0"]["chosen"]["relevance"] == 1.1 and base_fig["p0"]["rejected"]["relevance"] == 0.9
    collapsed = per_prompt(tuned, _figures(n, [True, False], [0.1, 0.2]), k=2)
    s = compare_utility(base, tuned, coherence={"base": base_fig, "tuned": collapsed})
    c = s["coherence"]
    assert s["target_met"] and not s["coherent"] and not c["coherent"]["tuned"]
    assert c["degenerate"]["tuned"]["mean"] == 0.5 and c["degenerate_minus_base"]["tuned"]["diff"] == 0.5
    assert c["relevance_minus_base"]["tuned"]["diff"] == pytest.approx(-0.85)
    assert c["relevance_minus_base"]["tuned"]["ci95"][1] < 0
    healthy = per_prompt(tuned, _figures(n, [False, False], [0.95, 1.0]), k=2)
    ok = compare_utility(base, tuned, coherence={"base": base_fig, "tuned": healthy})
    assert ok["coherent"] and ok["coherence"]["coherent"] == {"tuned": True}
    utility_chart(s, tmp_path / "utility.png")
    assert (tmp_path / "utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_relevance_reads_the_opening_of_an_answer_cut_at_a_space():
    from lite_delta.evaluate.coherence import RELEVANCE_CHARS, opening

    assert opening("short answer") == "short answer"
    long = "word " * 200
    cut = opening(long)
    assert len(cut) <= RELEVANCE_CHARS and long.startswith(cut) and not cut.endswith("wor")
    assert opening("x" * 500) == "x" * RELEVANCE_CHARS  # no space to cut at
