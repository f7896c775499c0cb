import json
import random

import datasets
import pytest
from pydantic import ValidationError

from lite_delta.errors import LiteDeltaError
from lite_delta.pairs import PairConfig, make_pairs
from lite_delta.pairs.pairing import FILTERS

STRONG = "Qwen/Qwen2.5-3B-Instruct-GGUF"
WEAK = "Qwen/Qwen2.5-1.5B-Instruct-GGUF"


def record(index, completion, *, sample=0, model=STRONG, finish="stop", prompt_tokens=10, tokens=None, pid=None):
    """One completion record as the generate stage writes it."""
    pid = pid or f"pid{index}"
    return {
        "key": f"{model}|{pid}|{sample}",
        "prompt_id": pid,
        "index": index,
        "sample": sample,
        "messages": [{"role": "user", "content": f"question {index}"}],
        "completion": completion,
        "finish_reason": finish,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(completion.split()) if tokens is None else tokens,
        "model": model,
        "seed": 1234 + sample,
    }


def write(directory, records):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "completions.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return directory


def read_pairs(out):
    return [json.loads(line) for line in (out / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]


def read_stats(out):
    return json.loads((out / "stats.json").read_text(encoding="utf-8"))


def by_model(tmp_path, chosen, rejected, **kw):
    cfg = PairConfig(
        mode="by_model",
        chosen=write(tmp_path / "strong", chosen),
        rejected=write(tmp_path / "weak", rejected),
        out=tmp_path / "pairs",
        **kw,
    )
    return make_pairs(cfg)


def by_score(tmp_path, samples, **kw):
    cfg = PairConfig(mode="by_score", samples=write(tmp_path / "samples", samples), out=tmp_path / "pairs", **kw)
    return make_pairs(cfg)


# --- by_model --------------------------------------------------------------------------------------


def test_by_model_writes_trl_conversational_pairs(tmp_path):
    chosen = [record(i, f"**Part**\nStrong answer {i}.\n\n**More**") for i in range(3)]
    rejected = [record(i, f"Weak answer {i}.", model=WEAK) for i in range(3)]
    out = by_model(tmp_path, chosen, rejected)
    assert out == tmp_path / "pairs"
    rows = read_pairs(out)
    assert [r["prompt_id"] for r in rows] == ["pid0", "pid1", "pid2"]
    row = rows[1]
    assert row["prompt"] == [{"role": "user", "content": "question 1"}]
    assert row["chosen"] == [{"role": "assistant", "content": "**Part**\nStrong answer 1.\n\n**More**"}]
    assert row["rejected"] == [{"role": "assistant", "content": "Weak answer 1."}]
    assert (row["chosen_model"], row["rejected_model"]) == (STRONG, WEAK)
    assert (row["chosen_score"], row["rejected_score"]) == (2.0, 0.0)  # default scorer: sections
    assert set(row) == {
        "prompt", "chosen", "rejected", "prompt_id", "chosen_model", "rejected_model", "chosen_score", "rejected_score"
    }


def test_by_model_joins_on_prompt_and_sample_and_counts_unmatched(tmp_path):
    chosen = [record(i, f"strong {i}", sample=s) for i in (0, 1, 2) for s in (0, 1)]
    rejected = [record(i, f"weak {i}", sample=s, model=WEAK) for i in (1, 2, 3) for s in (0,)]
    out = by_model(tmp_path, chosen, rejected)
    rows = read_pairs(out)
    assert [(r["prompt_id"], r["chosen"][0]["content"]) for r in rows] == [("pid1", "strong 1"), ("pid2", "strong 2")]
    stats = read_stats(out)
    # chosen-only: (0,0) (0,1) (1,1) (2,1); rejected-only: (3,0)
    assert stats["filters"]["unmatched"] == 5
    assert stats["candidates"] == 2
    assert stats["pairs"] == 2


def test_by_model_joins_by_prompt_id_not_index(tmp_path):
    chosen = [record(0, "strong", pid="same")]
    rejected = [record(7, "weak", pid="same", model=WEAK)]
    rows = read_pairs(by_model(tmp_path, chosen, rejected))
    assert len(rows) == 1 and rows[0]["rejected"][0]["content"] == "weak"


def test_by_model_filters_are_counted_in_order(tmp_path):
    chosen = [
        record(0, "   "),                           # empty
        record(1, "", finish="length"),             # empty wins over truncated
        record(2, "cut off", finish="length"),       # truncated
        record(3, " same text\n"),                  # identical after strip
        record(4, "long answer", tokens=3000),      # over_max_length
        record(5, "good strong"),                   # kept
    ]
    rejected = [
        record(0, "weak", model=WEAK),
        record(1, "weak", model=WEAK),
        record(2, "weak", model=WEAK),
        record(3, "same text", model=WEAK),
        record(4, "weak", model=WEAK),
        record(5, "good weak", model=WEAK),
    ]
    out = by_model(tmp_path, chosen, rejected)
    stats = read_stats(out)
    assert stats["filters"] == {
        "unmatched": 0, "empty": 2, "truncated": 1, "identical": 1, "over_max_length": 1,
        "too_few_samples": 0, "below_margin": 0,
    }
    assert stats["candidates"] == 6
    assert [r["prompt_id"] for r in read_pairs(out)] == ["pid5"]


def test_by_model_truncated_on_rejected_side_and_over_length_counts_prompt(tmp_path):
    chosen = [record(0, "a"), record(1, "b", prompt_tokens=2045, tokens=5)]
    rejected = [record(0, "x", model=WEAK, finish="length"), record(1, "y", model=WEAK, tokens=5)]
    stats = read_stats(by_model(tmp_path, chosen, rejected))
    assert stats["filters"]["truncated"] == 1
    assert stats["filters"]["over_max_length"] == 1  # 2045 + 5 > 2048
    assert stats["pairs"] == 0


def test_by_model_allow_truncated_and_no_max_length_keep_pairs(tmp_path):
    chosen = [record(0, "a", finish="length"), record(1, "b", tokens=10_000)]
    rejected = [record(0, "x", model=WEAK), record(1, "y", model=WEAK)]
    stats = read_stats(by_model(tmp_path, chosen, rejected, allow_truncated=True, max_length=None))
    assert stats["pairs"] == 2
    assert sum(stats["filters"].values()) == 0


# --- by_score --------------------------------------------------------------------------------------


def sections(n):
    return "\n".join(f"**Section {i}**\ntext" for i in range(n)) or "no sections"


def test_by_score_picks_best_and_worst(tmp_path):
    samples = [record(0, sections(n), sample=s) for s, n in enumerate([3, 1, 2])]
    out = by_score(tmp_path, samples)
    (row,) = read_pairs(out)
    assert row["chosen"][0]["content"] == sections(3)
    assert row["rejected"][0]["content"] == sections(1)
    assert (row["chosen_score"], row["rejected_score"]) == (3.0, 1.0)
    assert row["chosen_model"] == row["rejected_model"] == STRONG
    stats = read_stats(out)
    assert stats["scorer"] == {"name": "sections", "chosen_mean": 3.0, "rejected_mean": 1.0, "margin_mean": 2.0}


def test_by_score_ties_choose_lowest_sample_and_reject_highest(tmp_path):
    texts = [sections(2) + " a", sections(2) + " b", "zero c", "zero d"]
    samples = [record(0, t, sample=s) for s, t in enumerate(texts)]
    (row,) = read_pairs(by_score(tmp_path, samples))
    assert row["chosen"][0]["content"] == texts[0]
    assert row["rejected"][0]["content"] == texts[3]


def test_by_score_margin_identical_and_too_few(tmp_path):
    samples = [
        record(0, sections(1) + " x", sample=0), record(0, sections(1) + " y", sample=1),   # margin 0, kept
        record(1, sections(1), sample=0), record(1, sections(1), sample=1),               # identical
        record(2, sections(3), sample=0), record(2, "   ", sample=1),                      # 1 left
        record(3, sections(2), sample=0), record(3, "cut", sample=1, finish="length"),
        record(3, "long", sample=2, tokens=5000), record(3, "none", sample=3),            # kept: 2 vs 0
    ]
    out = by_score(tmp_path, samples, min_margin=0)
    stats = read_stats(out)
    assert stats["filters"] == {
        "unmatched": 0, "empty": 1, "truncated": 1, "identical": 1, "over_max_length": 1,
        "too_few_samples": 1, "below_margin": 0,
    }
    assert stats["candidates"] == 4
    assert [r["prompt_id"] for r in read_pairs(out)] == ["pid0", "pid3"]

    stats = read_stats(by_score(tmp_path, samples, min_margin=1))
    assert stats["filters"]["below_margin"] == 2  # prompts 0 and 1 now fail the margin first
    assert stats["filters"]["identical"] == 0
    assert [r["prompt_id"] for r in read_pairs(tmp_path / "pairs")] == ["pid3"]


def test_by_score_with_user_scorer(tmp_path):
    samples = [record(0, "a" * n, sample=s) for s, n in enumerate([5, 9, 2])]
    (row,) = read_pairs(by_score(tmp_path, samples, scorer="builtins:len"))
    assert (row["chosen_score"], row["rejected_score"]) == (9.0, 2.0)


def test_failing_user_scorer_is_a_clear_error(tmp_path):
    samples = [record(0, "a", sample=0), record(0, "b", sample=1)]
    with pytest.raises(LiteDeltaError, match="os.path:getsize"):
        by_score(tmp_path, samples, scorer="os.path:getsize")


# --- outputs ---------------------------------------------------------------------------------------


def test_dataset_on_disk_matches_jsonl_and_is_replaced(tmp_path):
    chosen = [record(i, f"strong {i}") for i in range(4)]
    rejected = [record(i, f"weak {i}", model=WEAK) for i in range(4)]
    out = by_model(tmp_path, chosen, rejected)
    ds = datasets.load_from_disk(str(out / "dataset"))
    assert ds.to_list() == read_pairs(out)
    assert len(ds) == 4

    rejected[0]["completion"] = "strong 0"  # now identical: one pair fewer on the rerun
    out = by_model(tmp_path, chosen, rejected)
    assert len(datasets.load_from_disk(str(out / "dataset"))) == 3
    assert not list(out.glob("*.tmp"))


def test_stats_fields(tmp_path):
    chosen = [record(0, "**A**\n\n- go to bed\n- eat your food", tokens=4),
              record(1, "**B**\n\none two three", tokens=10)]
    rejected = [record(0, "short", model=WEAK, tokens=1), record(1, "tiny", model=WEAK, tokens=2)]
    out = by_model(tmp_path, chosen, rejected, scorer="list_items")
    stats = read_stats(out)
    assert stats["mode"] == "by_model"
    assert stats["inputs"] == {"chosen": str(tmp_path / "strong"), "rejected": str(tmp_path / "weak")}
    assert (stats["pairs"], stats["candidates"]) == (2, 2)
    assert set(stats["filters"]) == set(FILTERS)
    side = stats["chosen"]
    assert side["completion_tokens"] == {"mean": 7.0, "p50": 4, "p90": 10, "max": 10}
    assert side["chars"]["max"] == len("**A**\n\n- go to bed\n- eat your food")
    assert side["scorer_means"] == {"sections": 1.0, "paragraphs": 2.0, "list_items": 1.0, "list_markers": 1.0,
                                    "length": 6.5}
    assert stats["rejected"]["scorer_means"]["sections"] == 0.0
    assert stats["scorer"] == {"name": "list_items", "chosen_mean": 1.0, "rejected_mean": 0.0, "margin_mean": 1.0}
    assert "warning" not in stats


def test_zero_pairs_still_writes_files_with_a_warning(tmp_path):
    chosen = [record(0, "same"), record(1, "same too"), record(2, "")]
    rejected = [record(0, "same", model=WEAK), record(1, "same too", model=WEAK), record(2, "x", model=WEAK)]
    out = by_model(tmp_path, chosen, rejected)
    assert (out / "pairs.jsonl").read_text() == ""
    assert len(datasets.load_from_disk(str(out / "dataset"))) == 0
    stats = read_stats(out)
    assert stats["pairs"] == 0
    assert "`identical`" in stats["warning"]
    assert stats["chosen"]["completion_tokens"]["mean"] is None


def test_output_is_deterministic_under_shuffled_input(tmp_path):
    chosen = [record(i, f"strong {i} " + sections(i % 3), sample=s) for i in range(6) for s in range(2)]
    rejected = [record(i, f"weak {i}", sample=s, model=WEAK) for i in range(6) for s in range(2)]
    first = by_model(tmp_path / "a", chosen, rejected)
    shuffled_c, shuffled_r = chosen[:], rejected[:]
    random.Random(0).shuffle(shuffled_c)
    random.Random(1).shuffle(shuffled_r)
    assert shuffled_c != chosen
    second = by_model(tmp_path / "b", shuffled_c, shuffled_r)
    text = (first / "pairs.jsonl").read_bytes()
    assert text == (second / "pairs.jsonl").read_bytes()
    rows = read_pairs(first)
    assert [r["chosen"][0]["content"] for r in rows[:3]] == [chosen[0]["completion"], chosen[1]["completion"],
                                                            chosen[2]["completion"]]


def test_by_score_deterministic_under_shuffled_input(tmp_path):
    samples = [record(i, sections((i + s) % 4) + f" {s}", sample=s) for i in range(5) for s in range(3)]
    first = by_score(tmp_path / "a", samples)
    shuffled = samples[:]
    random.Random(2).shuffle(shuffled)
    second = by_score(tmp_path / "b", shuffled)
    assert (first / "pairs.jsonl").read_bytes() == (second / "pairs.jsonl").read_bytes()
    assert [r["prompt_id"] for r in read_pairs(first)] == [f"pid{i}" for i in range(5)]


# --- errors ----------------------------------------------------------------------------------------


def test_missing_input_dir_names_the_path(tmp_path):
    cfg = PairConfig(mode="by_model", chosen=tmp_path / "nope", rejected=tmp_path / "nope2", out=tmp_path / "o")
    with pytest.raises(LiteDeltaError, match="nope"):
        make_pairs(cfg)


def test_empty_input_is_an_error(tmp_path):
    with pytest.raises(LiteDeltaError, match="no completions"):
        by_score(tmp_path, [])


def test_wrong_record_shape_names_file_record_and_field(tmp_path):
    bad = record(0, "a")
    bad["completion_tokens"] = "12"
    with pytest.raises(LiteDeltaError, match=r"samples.*record 2 field `completion_tokens`"):
        by_score(tmp_path, [record(0, "b"), bad])
    bad = record(0, "a")
    bad["messages"] = [{"role": "user"}]
    with pytest.raises(LiteDeltaError, match="role"):
        by_score(tmp_path, [bad])


def test_unknown_scorer(tmp_path):
    with pytest.raises(LiteDeltaError, match="unknown scorer 'bold'"):
        by_score(tmp_path, [record(0, "a")], scorer="bold")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"mode": "by_model", "chosen": "a"}, "needs both `chosen` and `rejected`"),
        ({"mode": "by_model", "chosen": "a", "rejected": "b", "samples": "c"}, "for mode 'by_score'"),
        ({"mode": "by_score"}, "needs `samples`"),
        ({"mode": "by_score", "samples": "c", "chosen": "a"}, "for mode 'by_model'"),
        ({"mode": "by_judge", "samples": "c"}, "mode"),
        ({"mode": "by_score", "samples": "c", "beta": 5}, "beta"),
        ({"mode": "by_score", "samples": "c", "min_margin": -1}, "min_margin"),
    ],
)
def test_config_validation(tmp_path, fields, message):
    with pytest.raises(ValidationError, match=message):
        PairConfig(out=tmp_path, **fields)


def test_by_score_pairs_per_prompt_takes_disjoint_pairs_while_the_margin_holds(tmp_path):
    # scores 5, 4, 1, 0: best-worst (5, 0) and second best-second worst (4, 1), each answer used once
    samples = [record(0, sections(n) + f" s{s}", sample=s) for s, n in enumerate([1, 5, 0, 4])]
    # scores 3, 0, 0, 0: only the first pair clears the margin of 2
    samples += [record(1, sections(n) + f" s{s}", sample=s) for s, n in enumerate([0, 3, 0, 0])]
    out = by_score(tmp_path, samples, min_margin=2, pairs_per_prompt=2)
    rows = read_pairs(out)
    assert [(r["prompt_id"], r["chosen_score"], r["rejected_score"]) for r in rows] == [
        ("pid0", 5.0, 0.0), ("pid0", 4.0, 1.0), ("pid1", 3.0, 0.0)]
    texts = [r[side][0]["content"] for r in rows if r["prompt_id"] == "pid0" for side in ("chosen", "rejected")]
    assert len(set(texts)) == 4
    assert read_stats(out)["settings"]["pairs_per_prompt"] == 2
    # the default is the paper's one pair per prompt; the same samples give best-worst only
    rows = read_pairs(by_score(tmp_path, samples, min_margin=2))
    assert [(r["prompt_id"], r["chosen_score"]) for r in rows] == [("pid0", 5.0), ("pid1", 3.0)]
    # more pairs asked for than k // 2: stops at two for four samples
    assert len(read_pairs(by_score(tmp_path, samples, min_margin=0, pairs_per_prompt=5))) == 4


def _gate_samples(tmp_path):
    """Two prompts, two pairs each (by_score, sections): every answer names the relevance a stated judge gives it."""
    def answer(sections, rel):
        return "".join(f"**Section {i}**\ntext\n" for i in range(sections)) + f"rel={rel}"
    rows = [record(0, answer(4, 0.5), sample=0), record(0, answer(3, 0.2), sample=1),
            record(0, answer(0, 0.5), sample=2), record(0, answer(1, 0.25), sample=3),
            record(1, answer(5, 0.1), sample=0), record(1, answer(0, 0.3), sample=1)]
    return write(tmp_path / "samples", rows)


def _stated_judge(seen):
    def judge(items):
        seen.extend(items)
        return [float(answer.rsplit("rel=", 1)[1]) for _, answer in items]
    return judge


def test_the_relevance_gate_drops_pairs_whose_chosen_answer_is_less_relevant(tmp_path):
    seen = []
    cfg = PairConfig(mode="by_score", samples=_gate_samples(tmp_path), scorer="sections", pairs_per_prompt=2,
                     relevance_gate=0.1, out=tmp_path / "pairs")
    out = make_pairs(cfg, relevance=_stated_judge(seen))
    pairs = read_pairs(out)
    # prompt 0: 4 vs 0 sections (0.5 vs 0.5: kept), 3 vs 1 (0.2 vs 0.25: 0.05 less, within 0.1: kept);
    # prompt 1: 5 vs 0 (0.1 vs 0.3: 0.2 less relevant: dropped)
    assert [(p["prompt_id"], p["chosen_score"], p["rejected_score"]) for p in pairs] == [("pid0", 4, 0), ("pid0", 3, 1)]
    assert len(seen) == 6 and all(messages[0]["content"].startswith("question") for messages, _ in seen)
    stats = read_stats(out)
    assert stats["pairs"] == 2 and stats["filters"]["relevance_gate"] == 1
    assert stats["settings"]["relevance_gate"] == 0.1
    assert stats["relevance"]["before"] == {"chosen_mean": pytest.approx(0.8 / 3), "rejected_mean": pytest.approx(1.05 / 3)}
    assert stats["relevance"]["after"] == {"chosen_mean": pytest.approx(0.35), "rejected_mean": pytest.approx(0.375)}
    strict = make_pairs(cfg.model_copy(update={"relevance_gate": 0.0, "out": tmp_path / "strict"}),
                        relevance=_stated_judge([]))
    assert [p["chosen_score"] for p in read_pairs(strict)] == [4]


def test_no_gate_no_judge_and_a_gate_without_one_is_an_error(tmp_path):
    samples = _gate_samples(tmp_path)
    out = make_pairs(PairConfig(mode="by_score", samples=samples, scorer="sections", pairs_per_prompt=2,
                                out=tmp_path / "pairs"), relevance=lambda items: pytest.fail("judged without a gate"))
    stats = read_stats(out)
    assert stats["pairs"] == 3 and "relevance_gate" not in stats["filters"] and "relevance" not in stats
    with pytest.raises(LiteDeltaError, match="pairing.relevance_gate"):
        make_pairs(PairConfig(mode="by_score", samples=samples, scorer="sections", relevance_gate=0.1,
                              out=tmp_path / "gated"))
