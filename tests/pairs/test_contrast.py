"""Contrast pairs (pairs/contrast.py): a chosen answer against its own degenerate copy."""
import json

import pytest

from lite_delta.degenerate import degenerate_reason
from lite_delta.pairs import PairConfig, make_pairs
from lite_delta.pairs.contrast import KINDS, contrast_row, degenerate_copy
from lite_delta.utility_scorers import list_item_count

# A chosen answer as the demo's student writes one (SmolLM2-135M, a demo run's pairs, shortened).
LISTED = ("Here are some ideas to keep your plants alive while you are away:\n\n"
          "1. **Water deeply**: Give every pot a long soak the day before you leave.\n\n"
          "2. **Group pots**: Plants close to each other keep the air around them moist.\n\n"
          "3. **Less sun**: Move them out of direct sun, so they drink less water.")
# Bold titles of 3+ words are items with content by themselves: bare headings do not lower the count.
LONG_TITLES = LISTED.replace("**Water deeply**", "**Water them deeply**").replace(
    "**Group pots**", "**Group the pots**").replace("**Less sun**", "**Keep out of sun**")
PROSE = "Plants need water and light, so ask a neighbour to look after them while you travel for a while."


@pytest.mark.parametrize("kind", KINDS)
def test_each_copy_keeps_the_opening_and_has_fewer_items_with_content(kind):
    copy = degenerate_copy(LISTED, kind)
    opening = LISTED.split("1. ")[0]
    assert copy.startswith(opening) and copy != LISTED
    assert list_item_count(copy) < list_item_count(LISTED) == 3


def test_the_forms_are_the_ones_a_broken_student_writes():
    loop = degenerate_copy(LISTED, "loop")
    assert loop.split(":\n\n", 1)[1].startswith("1. **1.1.1.1.1.1.1.1**\n\n1.1.1.1.1.1")
    assert degenerate_reason(loop) == "repeated_lines" and len(loop) >= len(LISTED)
    repeat = degenerate_copy(LISTED, "repeat").split("\n\n")[1:]
    assert [line.split(" ", 1)[0] for line in repeat][:4] == ["1.", "2.", "3.", "4."]
    assert len({line.split(" ", 1)[1] for line in repeat}) == 1
    assert degenerate_copy(LISTED, "headings").split(":\n\n", 1)[1].splitlines() == [
        "1. **Water deeply**:", "2. **Group pots**:", "3. **Less sun**:"]
    assert degenerate_copy(PROSE, "loop") is None
    with pytest.raises(ValueError, match="one of loop, repeat, headings"):
        degenerate_copy(LISTED, "salad")


def test_a_row_gets_the_first_form_that_lowers_its_count_and_none_below_two_items():
    row = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": LONG_TITLES}],
           "rejected": [{"role": "assistant", "content": PROSE}], "prompt_id": "p", "rejected_model": "m",
           "chosen_score": 3.0, "rejected_score": 0.0}
    # bare headings of 3-word titles keep the count: the next form is used
    extra = contrast_row(row, ["headings", "repeat"], list_item_count)
    assert extra["contrast"] == "repeat" and extra["rejected_model"] == "contrast:repeat"
    assert extra["chosen"] == row["chosen"] and extra["prompt"] == row["prompt"] and extra["rejected_score"] == 1.0
    assert contrast_row(row, ["headings"], list_item_count) is None
    assert contrast_row(row, KINDS, list_item_count) == contrast_row(row, KINDS, list_item_count)  # fixed by the text
    one_item = {**row, "chosen": [{"role": "assistant", "content": "Tips:\n\n1. Water the plants well first."}]}
    assert contrast_row(one_item, KINDS, list_item_count) is None


def _samples(tmp_path):
    rows = []
    for p, answers in enumerate([[LISTED, PROSE, LISTED.replace("Water", "Soak"), PROSE + " Really."],
                                 ["Tips:\n\n1. Water the plants well first.", PROSE, PROSE + " Soon.", PROSE + " Ok."]]):
        for s, text in enumerate(answers):
            rows.append({"key": f"m|pid{p}|{s}", "prompt_id": f"pid{p}", "index": p, "sample": s,
                         "messages": [{"role": "user", "content": f"question {p}"}], "completion": text,
                         "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": len(text.split()),
                         "model": "m", "seed": s})
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def test_make_pairs_appends_one_contrast_pair_per_prompt_and_counts_it_apart(tmp_path):
    samples = _samples(tmp_path)
    plain = make_pairs(PairConfig(mode="by_score", samples=samples, scorer="list_items", min_margin=1,
                                  pairs_per_prompt=2, out=tmp_path / "plain"))
    out = make_pairs(PairConfig(mode="by_score", samples=samples, scorer="list_items", min_margin=1,
                                pairs_per_prompt=2, contrast=list(KINDS), out=tmp_path / "contrast"))
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    sampled = [json.loads(line) for line in (plain / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    # prompt 0: its first sampled pair, one contrast pair on that best chosen answer, its second pair; prompt 1
    # (one item): none
    assert [r.get("contrast") is not None for r in rows] == [False, True, False, False]
    assert [r for r in rows if "contrast" not in r] == sampled
    assert rows[1]["chosen"] == rows[0]["chosen"] and rows[1]["rejected_model"].startswith("contrast:")
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    before = json.loads((plain / "stats.json").read_text(encoding="utf-8"))
    assert stats["pairs"] == 4 and stats["contrast"]["pairs"] == 1 and sum(stats["contrast"]["kinds"].values()) == 1
    assert stats["scorer"] == before["scorer"] and stats["settings"]["contrast"] == list(KINDS)
    assert "contrast" not in before and "contrast" not in before["settings"]
    import datasets
    assert datasets.load_from_disk(str(out / "dataset")).num_rows == 4


def test_training_reads_the_contrast_mark_and_sft_leaves_those_pairs_out(tmp_path):
    from lite_delta.train.pairs_io import load_pairs, sampled_pairs, strip_contrast

    out = make_pairs(PairConfig(mode="by_score", samples=_samples(tmp_path), scorer="list_items", min_margin=1,
                                pairs_per_prompt=2, contrast=list(KINDS), out=tmp_path / "pairs"))
    rows = load_pairs(out)
    assert [r.get("contrast") for r in rows][:2] == [None, rows[1]["contrast"]] and rows[1]["contrast"] in KINDS
    trained, n = strip_contrast(rows)
    assert n == 1 and all(set(r) == {"prompt", "chosen", "rejected"} for r in trained)
    assert [r["rejected"] for r in trained] == [r["rejected"] for r in rows]
    assert sampled_pairs(rows) == [r for r in rows if "contrast" not in r] and len(sampled_pairs(rows)) == 3
    # a hand-made file's own `contrast` field that is not a form name is not a mark
    (tmp_path / "own.jsonl").write_text(json.dumps({**{k: rows[0][k] for k in ("prompt", "chosen", "rejected")},
                                                    "contrast": 0.5}) + "\n", encoding="utf-8")
    assert "contrast" not in load_pairs(tmp_path / "own.jsonl")[0]


def test_the_report_counts_contrast_pairs_apart(tmp_path):
    from lite_delta.report import pairs_section

    samples = _samples(tmp_path)
    make_pairs(PairConfig(mode="by_score", samples=samples, scorer="list_items", min_margin=1,
                          pairs_per_prompt=2, contrast=list(KINDS), out=tmp_path / "run" / "pairs"))
    section = "\n".join(pairs_section(tmp_path / "run"))
    assert "4 pairs from" in section and "1 of them are contrast pairs" in section and "the 3 sampled pairs'" in section
    make_pairs(PairConfig(mode="by_score", samples=samples, scorer="list_items", min_margin=1,
                          pairs_per_prompt=2, out=tmp_path / "plain" / "pairs"))
    assert "contrast" not in "\n".join(pairs_section(tmp_path / "plain"))
