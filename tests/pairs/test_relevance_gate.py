"""pairing.relevance_gate with its real judge: the student's GGUF (SmolLM2-135M-Instruct) through llama.cpp, as the
pipeline opens it, on answers whose relevance to their prompt is known from what they say."""

import json

import pytest

from lite_delta.config import load_recipe
from lite_delta.pairs import PairConfig, make_pairs
from lite_delta.pipeline import default_recipe_path, pair_judge

PLANTS = "How can I keep my houseplants alive while I'm away on vacation?"
GROCERIES = "What are some ways to save money on groceries?"
ENGINES = ("Here are the parts of a car engine:\n\n1. The pistons move up and down inside the cylinders.\n"
           "2. The crankshaft turns that motion into rotation.\n3. The camshaft opens and closes the valves.\n"
           "4. The spark plugs ignite the fuel and air mixture.")
PLANTS_PROSE = ("Water your houseplants thoroughly before you leave, move them away from hot sunny windows, and "
                "group them together so they keep each other humid. A friend can water them if you are away long.")
GROCERY_LIST = ("Here are some ways to save money on groceries:\n\n1. Plan your meals for the week and write a "
                "shopping list.\n2. Buy store brands instead of name brands.\n3. Buy staples like rice and beans in "
                "bulk.\n4. Compare unit prices and use coupons.")
VAGUE = ("That depends on many things. Everyone's situation is different, so it is hard to give one answer that "
         "fits all people.")  # answers no question in particular


def _samples(folder, answers_by_prompt):
    folder.mkdir(parents=True)
    rows = [{"key": f"m|p{i}|{s}", "prompt_id": f"p{i}", "index": i, "sample": s,
             "messages": [{"role": "user", "content": prompt}], "completion": answer, "finish_reason": "stop",
             "prompt_tokens": 20, "completion_tokens": 60, "model": "m", "seed": s}
            for i, (prompt, answers) in enumerate(answers_by_prompt) for s, answer in enumerate(answers)]
    (folder / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def judge(smollm2_gguf):
    recipe = load_recipe(default_recipe_path(), [f"student={smollm2_gguf}", "pairing.relevance_gate=0.1"])
    return pair_judge(recipe)


def test_the_students_judge_drops_an_off_topic_list_and_keeps_an_on_topic_one(judge, tmp_path):
    samples = _samples(tmp_path / "samples", [(PLANTS, [ENGINES, PLANTS_PROSE]), (GROCERIES, [GROCERY_LIST, VAGUE])])
    cfg = PairConfig(mode="by_score", samples=samples, scorer="list_items", min_margin=2.0, relevance_gate=0.1,
                     out=tmp_path / "pairs")
    out = make_pairs(cfg, relevance=judge)
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["prompt"][0]["content"] for p in pairs] == [GROCERIES]  # the engine list answers no houseplant question
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["filters"]["relevance_gate"] == 1
    before, after = stats["relevance"]["before"], stats["relevance"]["after"]
    assert before["chosen_mean"] < before["rejected_mean"] and after["chosen_mean"] > 0.1


def test_without_a_gate_there_is_no_judge_and_the_gate_needs_a_gguf_student(smollm2_gguf):
    assert pair_judge(load_recipe(default_recipe_path(), [f"student={smollm2_gguf}"])) is None
    from lite_delta.errors import LiteDeltaError

    with pytest.raises((LiteDeltaError, ValueError), match="pairing.relevance_gate"):
        load_recipe(default_recipe_path(), ["student=HuggingFaceTB/SmolLM2-135M-Instruct", "pairing.relevance_gate=0.1",
                                            "export.enabled=false", "rounds.n=1"])


def test_the_pair_command_gates_with_its_judge_and_wants_both_flags(smollm2_gguf, tmp_path, capsys):
    from lite_delta.cli import main

    samples = _samples(tmp_path / "samples", [(PLANTS, [ENGINES, PLANTS_PROSE]), (GROCERIES, [GROCERY_LIST, VAGUE])])
    common = ["pair", "--samples", str(samples), "--scorer", "list_items", "--min-margin", "2"]
    with pytest.raises(SystemExit) as info:
        main(common + ["--out", str(tmp_path / "half"), "--relevance-gate", "0.1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--judge" in err and "Traceback" not in err
    assert not (tmp_path / "half").exists()
    main(common + ["--out", str(tmp_path / "pairs"), "--relevance-gate", "0.1", "--judge", str(smollm2_gguf)])
    stats = json.loads((tmp_path / "pairs" / "stats.json").read_text(encoding="utf-8"))
    assert stats["pairs"] == 1 and stats["filters"]["relevance_gate"] == 1
