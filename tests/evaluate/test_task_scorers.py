"""Golden tests: every scorer on real benchmark rows (../shared/benchdata, read in place).

Reference answers written as model outputs must score correct; crafted wrong outputs must not.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import BENCHDATA, BENCHDATA_SKIP

from lite_delta.evaluate import scorers
from lite_delta.evaluate.tasks import make_task

pytestmark = pytest.mark.skipif(not BENCHDATA.is_dir(), reason=BENCHDATA_SKIP)


def rows(relative: str) -> list[dict]:
    with open(BENCHDATA / relative, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_gsm8k_all_gold_answers_score_correct_and_off_by_one_wrong():
    task = make_task("gsm8k", [], [])
    data = rows("gsm8k/test.jsonl")
    assert len(data) == 1319
    for row in data:
        gold = row["answer"].split("####")[-1].strip()
        # the reference solution itself ends "#### N"; a chat answer ends "So the answer is N."
        assert task.score(row, [row["answer"]])["correct"], row["answer"]
        assert task.score(row, [f"Step by step. So the answer is {gold}."])["correct"]
        wrong = str(int(gold.replace(",", "")) + 1)
        assert not task.score(row, [f"So the answer is {wrong}."])["correct"]
        assert not task.score(row, ["I do not know."])["correct"]


def test_last_number_handles_commas_dollars_and_decimals():
    assert scorers.last_number("It costs $1,234.50 in total") == "1234.50"
    assert scorers.numbers_equal("18.00", "18")
    assert not scorers.numbers_equal(None, "18")
    assert scorers.last_number("the answer is -7.") == "-7"


def test_math500_all_answers_and_solutions_are_equivalent_to_gold():
    task = make_task("math500", [], [])
    data = rows("math500/test.jsonl")
    assert len(data) == 500
    failures = []
    for row in data:
        final = f"Work.\nFinal Answer: The final answer is ${row['answer']}$. I hope it is correct."
        for output in (final, row["solution"]):
            if not task.score(row, [output])["correct"]:
                failures.append(row["unique_id"])
    assert failures == []


def test_math500_wrong_answers_score_wrong():
    task = make_task("math500", [], [])
    numeric = [r for r in rows("math500/test.jsonl") if r["answer"].strip().lstrip("-").isdigit()]
    assert len(numeric) > 100
    for row in numeric:
        wrong = int(row["answer"]) + 1
        out = f"Final Answer: The final answer is ${wrong}$. I hope it is correct."
        assert not task.score(row, [out])["correct"], row["unique_id"]
        assert not task.score(row, [f"So it is \\boxed{{{wrong}}}."])["correct"]
    assert not task.score(numeric[0], ["no idea"])["correct"]


def test_mmlu_letter_extraction_on_every_subset_row():
    task = make_task("mmlu", [], [])
    data = rows("mmlu/test.jsonl")
    assert len({r["subject"] for r in data}) == 57
    for row in data:
        gold = "ABCD"[row["answer"]]
        wrong = "ABCD"[(row["answer"] + 1) % 4]
        assert task.score(row, [f"Reasoning ({wrong}) is tempting.\nTherefore, the answer is ({gold})"])["correct"]
        assert not task.score(row, [f"Therefore, the answer is ({wrong})"])["correct"]
    assert scorers.mc_letter("the answer is: C because") == "C"
    assert scorers.mc_letter("no letter here") is None


def test_mmlu_score_is_a_macro_average_over_subjects():
    task = make_task("mmlu", [], [])
    records = [{"stratum": "a", "score": 1.0}] * 3 + [{"stratum": "b", "score": 0.0}]
    assert task.aggregate(records)["score"] == pytest.approx(0.5)
    assert task.aggregate(records)["micro"] == pytest.approx(0.75)


def test_bbh_every_target_scores_correct_and_another_target_wrong():
    task = make_task("bbh", [], [])
    files = sorted((BENCHDATA / "bbh/test").glob("*.jsonl"))
    assert len(files) == 27
    total = 0
    for path in files:
        data = rows(f"bbh/test/{path.name}")
        targets = sorted({r["target"] for r in data})
        for row in data:
            out = f"Let's think step by step.\nSome steps. So the answer is {row['target']}."
            assert task.score(row, [out])["correct"], (path.stem, row["target"])
            other = next(t for t in targets if t != row["target"])
            assert not task.score(row, [f"So the answer is {other}."])["correct"], (path.stem, other)
            total += 1
    assert total == 6511


def test_bbh_exemplar_chains_yield_their_final_answer():
    shots = rows("bbh/fewshot_olmes.jsonl")
    for shot in shots:
        final = shot["target"].rsplit("So the answer is ", 1)[1].rstrip(".")
        assert scorers.bbh_correct(scorers.bbh_extract(shot["target"]), final), shot["task"]


def _compliant(instruction: str, kwargs: dict) -> tuple[str, str]:
    """(a response that follows the instruction, one that does not)."""
    base = "The quick brown fox jumps over the lazy dog near the quiet river bank every single morning"
    if instruction == "punctuation:no_comma":
        return base + ".", "Yes, " + base + "."
    if instruction == "change_case:english_lowercase":
        return base.lower() + ".", base + " IN SHOUTING."
    if instruction == "change_case:english_capital":
        return base.upper() + ".", base + "."
    if instruction == "detectable_format:json_format":
        return json.dumps({"answer": base}), base
    if instruction == "startend:quotation":
        return f'"{base}."', base + "."
    if instruction == "detectable_format:number_bullet_lists":
        n = kwargs["num_bullets"]
        # loose scoring may drop a first or last line, so "too many" must be off by more than one
        return "\n".join(f"* point {i}" for i in range(n)), "\n".join(f"* point {i}" for i in range(n + 3))
    if instruction == "keywords:existence":
        return base + " " + " ".join(kwargs["keywords"]) + ".", base + "."
    if instruction == "detectable_format:title":
        return f"<<A Title>>\n{base}.", base + "."
    if instruction == "startend:end_checker":
        return f"{base}. {kwargs['end_phrase']}", f"{kwargs['end_phrase']} {base}."
    if instruction == "keywords:forbidden_words":
        return "Nothing relevant is said here at all.", f"{base} {kwargs['forbidden_words'][0]}."
    if instruction == "detectable_content:postscript":
        return f"{base}.\n\n{kwargs['postscript_marker']} see you", base + "."
    raise KeyError(instruction)


def test_ifeval_checkers_on_crafted_compliant_and_non_compliant_responses():
    task = make_task("ifeval", [], [])
    checked = 0
    for row in rows("ifeval/train.jsonl"):
        if len(row["instruction_id_list"]) != 1:
            continue
        try:
            good, bad = _compliant(row["instruction_id_list"][0], row["kwargs"][0])
        except KeyError:
            continue
        assert task.score(row, [good])["correct"], (row["key"], good)
        assert not task.score(row, [bad])["correct"], (row["key"], bad)
        checked += 1
    assert checked >= 100


def test_ifeval_loose_forgives_a_first_line_and_markdown():
    task = make_task("ifeval", [], [])
    row = next(r for r in rows("ifeval/train.jsonl") if r["instruction_id_list"] == ["startend:quotation"])
    result = task.score(row, ['Sure, here it is:\n"The whole answer is quoted."'])
    assert result["prompt_loose"] and not result["prompt_strict"]


def test_ifeval_rows_needing_punkt_are_known_and_excluded_when_it_is_missing():
    data = rows("ifeval/train.jsonl")
    needing = [r for r in data if scorers.ifeval_needs_punkt(r)]
    assert len(needing) == 64  # rows using number_sentences or capital_word_frequency
    task = make_task("ifeval", [], [])
    excluded = task.excluded(data)
    if scorers.punkt_available():
        assert excluded == {}
    else:
        assert sorted(excluded) == [i for i, r in enumerate(data) if scorers.ifeval_needs_punkt(r)]
        from lite_delta.errors import LiteDeltaError

        with pytest.raises(LiteDeltaError, match="punkt_tab"):
            task.score(needing[0], ["One sentence. Two sentences."])


def test_drop_gold_answers_score_f1_one_and_wrong_answers_zero():
    task = make_task("drop", [], [])
    data = rows("drop/validation.jsonl")
    assert len(data) == 19
    from lite_delta.evaluate.tasks import drop_answer_text

    for row in data:
        gold = drop_answer_text(row["answer"])
        assert task.score(row, [gold])["score"] == 1.0, gold
        assert task.score(row, ["purple elephants 987654"])["score"] == 0.0
    partial = task.score(data[0], ["Chaz Schilens scored"])  # gold "Chaz Schilens": 2 of 3 tokens
    assert partial["score"] == pytest.approx(0.8)


def test_popqa_alias_substring():
    task = make_task("popqa", [], [])
    data = rows("popqa/fewshot_olmes.jsonl")
    for row in data:
        alias = json.loads(row["possible_answers"])[-1]
        assert task.score(row, [f" It is {alias.upper()}."])["correct"]
        assert not task.score(row, [" zzz qqq"])["correct"]


def test_truthfulqa_mc2_from_log_likelihoods():
    task = make_task("truthfulqa", [], [])
    row = rows("truthfulqa/validation.jsonl")[0]
    labels = row["mc2_targets"]["labels"]
    favour_true = [0.0 if label else -5.0 for label in labels]
    result = task.score(row, favour_true)
    n_true = sum(labels)
    expected = n_true / (n_true + (len(labels) - n_true) * math.exp(-5))
    assert result["score"] == pytest.approx(expected)
    assert result["correct"]
    assert task.score(row, [-x - 5 for x in favour_true])["score"] < 0.5
    with pytest.raises(ValueError):
        task.score(row, [0.0])


def test_pass_at_k_is_human_evals_estimator():
    assert scorers.pass_at_k(20, 0, 10) == 0.0
    assert scorers.pass_at_k(20, 20, 1) == 1.0
    assert scorers.pass_at_k(20, 5, 1) == pytest.approx(0.25)
    assert scorers.pass_at_k(20, 5, 10) == pytest.approx(1 - math.comb(15, 10) / math.comb(20, 10))
    assert scorers.pass_at_k(2, 1, 10) is None
    assert scorers.humaneval_completion("    return 1\n```\nExplanation") == "    return 1"


def test_humaneval_all_canonical_solutions_pass_in_the_sandbox():
    from lite_delta.evaluate.sandbox import check_humaneval

    data = rows("humaneval/test.jsonl")
    assert len(data) == 164
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda r: check_humaneval(r, r["canonical_solution"]), data))
    seconds = time.perf_counter() - started
    failed = [(r["task_id"], res.humaneval) for r, res in zip(data, results) if not res.passed]
    assert failed == []
    assert all(res.isolation.get("python_guard") for res in results)
    assert seconds < 120, f"{seconds:.0f}s for 164 sandboxed runs"


def test_humaneval_wrong_completions_fail():
    task = make_task("humaneval", [], [], humaneval_samples=1)
    data = rows("humaneval/test.jsonl")[::16]  # a fixed spread of 11 problems
    for row in data:
        result = task.score(row, ["    pass\n"])
        assert result["passed"] == 0 and result["score"] == 0.0, row["task_id"]
    ok = task.score(data[0], [data[0]["canonical_solution"] + "```\nSome explanation."])
    assert ok["passed"] == 1 and ok["pass@1"] == 1.0
