"""The delta meter: verdicts on synthetic scores, items kept apart from the suite's, the CLI end to end on
SmolLM2 Q4_1 against its own derived Q2_K, bad input as one message, and the run's use of a finished meter."""

from __future__ import annotations

import io
import json
import random

import pytest
from conftest import BENCHDATA, BENCHDATA_SKIP

from lite_delta.cli import main
from lite_delta.errors import LiteDeltaError
from lite_delta.meter import items as meter_items
from lite_delta.meter.stage import stop_if_negative, summarize
from lite_delta.meter.verdict import NEGATIVE, POSITIVE, TOO_SMALL, verdict
from lite_delta.models.refs import DEMO_MODEL

needs_benchdata = pytest.mark.skipif(not BENCHDATA.is_dir(), reason=BENCHDATA_SKIP)


def gsm8k_style_rows(n: int, seed: int = 0) -> list[dict]:
    """Word problems in GSM8K's schema, answers computed (the Hub's train split is not reachable in tests)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = rng.randint(2, 20), rng.randint(2, 6), rng.randint(2, 9)
        rows.append({"question": f"Mia has {a} pens and buys {b} boxes of {c} pens. How many pens does she have?",
                     "answer": f"{b} * {c} = {b * c}, and {a} + {b * c} = {a + b * c}.\n#### {a + b * c}"})
    return rows


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- verdicts -----------------------------------------------------------------------------------


def test_the_three_verdicts_from_a_delta_and_its_interval():
    assert verdict(0.12, (0.05, 0.19), 0.05) == POSITIVE
    assert verdict(0.03, (0.01, 0.05), 0.05) == TOO_SMALL  # real but below min_delta
    assert verdict(0.10, (-0.02, 0.22), 0.05) == TOO_SMALL  # large but not told from 0 at this size
    assert verdict(-0.10, (-0.18, -0.02), 0.05) == NEGATIVE


@pytest.mark.parametrize("chosen_right,rejected_right,expected", [
    (70, 30, POSITIVE), (50, 50, TOO_SMALL), (52, 48, TOO_SMALL), (25, 75, NEGATIVE)])
def test_summarize_gives_the_overall_verdict_on_synthetic_scores(chosen_right, rejected_right, expected):
    rng = random.Random(0)
    chosen = [1.0] * chosen_right + [0.0] * (100 - chosen_right)
    rejected = [1.0] * rejected_right + [0.0] * (100 - rejected_right)
    rng.shuffle(chosen)
    rng.shuffle(rejected)
    rows, overall = summarize({"gsm8k": (chosen, rejected), "ifeval": (chosen, rejected)}, min_delta=0.05,
                              min_margin=1.0, seed=0, draws=2000)
    assert overall["verdict"] == expected and {r["verdict"] for r in rows} == {expected}
    assert overall["diff"] == pytest.approx((chosen_right - rejected_right) / 100)
    assert overall["ci95"][0] <= overall["diff"] <= overall["ci95"][1]
    assert "95% CI" in overall["thresholds"] and "5 points" in overall["thresholds"]


def test_the_scorer_task_is_judged_against_the_pairing_margin():
    chosen, rejected = [3.0] * 30, [2.0] * 30  # one section more on every prompt
    rows, overall = summarize({"scorer": (chosen, rejected)}, min_delta=0.05, min_margin=1.0, seed=0, draws=500)
    assert overall["verdict"] == POSITIVE and rows[0]["min_delta"] == 1.0
    _, overall = summarize({"scorer": (chosen, rejected)}, min_delta=0.05, min_margin=2.0, seed=0, draws=500)
    assert overall["verdict"] == TOO_SMALL


def test_a_negative_meter_stops_the_run_unless_told_to_continue(tmp_path):
    result = {"overall": {"verdict": NEGATIVE, "diff": -0.2, "ci95": [-0.3, -0.1], "measure": "gsm8k"}}
    with pytest.raises(LiteDeltaError, match="wrong way round; swap"):
        stop_if_negative(result, "stop", tmp_path)
    stop_if_negative(result, "continue", tmp_path)
    stop_if_negative({"overall": {**result["overall"], "verdict": POSITIVE}}, "stop", tmp_path)


# --- items --------------------------------------------------------------------------------------


def test_ifeval_style_items_are_checked_by_lm_evals_checkers():
    rows = meter_items.ifeval_rows()
    assert len(rows) >= 200 and len({r["prompt"] for r in rows}) == len(rows)
    no_comma = next(r for r in rows if r["instruction_id_list"] == ["punctuation:no_comma"])
    item = meter_items.ifeval_items([no_comma])[0]
    assert item.grade("A plain answer without any") == 1.0 and item.grade("One, two") == 0.0


@needs_benchdata
def test_items_are_disjoint_from_the_suites_evaluation_items(tmp_path):
    suite_gsm8k = [json.loads(line) for line in (BENCHDATA / "gsm8k/test.jsonl").read_text().splitlines()[:2]]
    suite_ifeval = [json.loads(line)["prompt"] for line in (BENCHDATA / "ifeval/train.jsonl").read_text().splitlines()]
    texts, sources = meter_items.eval_texts(BENCHDATA)
    assert set(sources) == {"gsm8k", "ifeval"} and all(s.startswith("dir:") for s in sources.values())
    # Our IFEval-style prompts are never one of IFEval's.
    assert not {meter_items.normalized(r["prompt"]) for r in meter_items.ifeval_rows()} & set(
        map(meter_items.normalized, suite_ifeval))
    # A train file that holds two suite questions (one re-spaced and re-cased) loses exactly those two.
    leaked = [suite_gsm8k[0], {**suite_gsm8k[1], "question": "  " + suite_gsm8k[1]["question"].upper()}]
    train = write_jsonl(tmp_path / "gsm8k/train.jsonl", gsm8k_style_rows(5) + leaked)
    rows, _ = meter_items.gsm8k_train_rows(train.parent.parent)
    kept, dropped = meter_items.drop_evaluation_items(meter_items.gsm8k_items(rows), texts)
    assert dropped == 2 and len(kept) == 5
    assert not {meter_items.normalized(meter_items.item_text(it)) for it in kept} & texts


def test_gsm8k_items_are_graded_by_the_final_number(tmp_path):
    rows, source = meter_items.gsm8k_train_rows(write_jsonl(tmp_path / "train.jsonl", gsm8k_style_rows(1)))
    item = meter_items.gsm8k_items(rows)[0]
    gold = rows[0]["answer"].split("####")[1].strip()
    assert source.startswith("file:") and item.grade(f"so the answer is {gold}") == 1.0 and item.grade("7 or 8") == 0.0


def test_a_file_not_in_gsm8ks_schema_is_refused(tmp_path):
    with pytest.raises(LiteDeltaError, match="row 1 .* not in GSM8K's schema"):
        meter_items.gsm8k_train_rows(write_jsonl(tmp_path / "train.jsonl", [{"prompt": "hi"}]))


# --- the CLI ------------------------------------------------------------------------------------


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return " ".join(err.split())


@pytest.mark.parametrize("argv,message", [
    (["--chosen", DEMO_MODEL, "--derive", "Q9"], "--derive: unknown llama.cpp quant type 'Q9'"),
    (["--derive", "Q2_K"], "no chosen teacher: give --chosen"),
    (["--chosen", DEMO_MODEL], "no rejected teacher: give --rejected REF, or --derive QUANT"),
    (["--chosen", DEMO_MODEL, "--derive", "Q2_K", "--tasks", "gsm8k,mmlu"], "tasks must be among gsm8k, ifeval, scorer"),
    (["--chosen", DEMO_MODEL, "--rejected", "missing.gguf", "--derive", "Q2_K"], "--rejected or --derive, not both"),
])
def test_bad_input_is_one_clear_message(argv, message, capsys, tmp_path):
    assert message in _fails(["meter", *argv, "--out", str(tmp_path / "m")], capsys)


def test_a_missing_gsm8k_file_says_how_to_point_at_one(capsys, tmp_path):
    err = _fails(["meter", "--chosen", DEMO_MODEL, "--derive", "Q2_K", "--data-dir", str(tmp_path),
                  "--eval-data-dir", str(BENCHDATA), "--out", str(tmp_path / "m")], capsys)
    assert "meter task gsm8k" in err and "gsm8k/train.jsonl" in err


@pytest.mark.slow
@needs_benchdata
def test_meter_end_to_end_on_smollm2_against_its_derived_q2k(tmp_path, derived_cache, monkeypatch, capsys):
    monkeypatch.setenv("LITE_DELTA_CACHE", str(derived_cache))
    data = write_jsonl(tmp_path / "data/gsm8k/train.jsonl", gsm8k_style_rows(20)).parent.parent
    out = tmp_path / "meter"
    # --threads 1: on a busy 2-core machine two llama.cpp threads wait on each other (measured 10x slower)
    main(["meter", "--chosen", DEMO_MODEL, "--derive", "Q2_K", "--limit", "2", "--max-tokens", "8", "--parallel", "2",
          "--threads", "1",
          "--data-dir", str(data), "--eval-data-dir", str(BENCHDATA), "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads((out / "meter.json").read_text())
    assert [(r["task"], r["n"]) for r in result["tasks"]] == [("gsm8k", 2), ("ifeval", 2)]
    assert result["overall"]["verdict"] in (POSITIVE, TOO_SMALL, NEGATIVE) and result["overall"]["advice"]
    chosen, rejected = result["teachers"]["chosen"], result["teachers"]["rejected"]
    assert chosen["answers"] == rejected["answers"] == 4 and chosen["tokens_per_s"] > 0 < rejected["tokens_per_s"]
    assert rejected["derived"]["quant"] == "Q2_K" and rejected["derived"]["reused"] is True
    assert rejected["identity"] == rejected["derived"]["identity"] != chosen["identity"]
    assert all(r["dropped_as_evaluation_items"] == 0 for r in result["tasks"])
    assert "| gsm8k | 2 |" in printed and "tokens/s" in printed and "Thresholds" in printed
    answers = [json.loads(line) for line in (out / "answers-rejected.jsonl").read_text().splitlines()]
    assert len(answers) == 4 and all(len(a["answers"]) == 1 for a in answers)


# --- the run --------------------------------------------------------------------------------------


def _recipe(tmp_path, **meter):
    from lite_delta.config import Recipe

    return Recipe.model_validate({
        "name": "m", "prompts": {"source": "builtin:demo", "n": 4},
        "teachers": {"chosen": DEMO_MODEL, "rejected": {"derive": "Q2_K"}},
        "generation": {"max_tokens": 64}, "meter": {"enabled": True, **meter}})


def test_the_meter_stage_comes_first_and_never_reruns_generation(tmp_path):
    from lite_delta.pipeline import STAGES, stage_keys

    on, off = _recipe(tmp_path), _recipe(tmp_path).model_copy(update={"meter": _recipe(tmp_path).meter.model_copy(
        update={"enabled": False})})
    assert STAGES[0] == "meter" and stage_keys(off)["meter"] is None and stage_keys(on)["meter"]
    assert stage_keys(on)["generate"] == stage_keys(off)["generate"]
    limit = _recipe(tmp_path, limit=7)
    assert stage_keys(limit)["meter"] != stage_keys(on)["meter"]
    assert stage_keys(limit)["generate"] == stage_keys(on)["generate"]
    assert stage_keys(_recipe(tmp_path, on_negative="continue"))["meter"] == stage_keys(on)["meter"]  # a stop is kept


def test_a_recipe_with_an_unknown_derive_quant_is_one_message(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nprompts: {source: 'builtin:demo'}\nteachers: {chosen: x.gguf, rejected: {derive: Q7}}\n")
    message = _fails(["run", str(recipe), "--runs-dir", str(tmp_path), "--dry-run"], capsys)
    assert "field `teachers.rejected.derive`: unknown llama.cpp quant type 'Q7'" in message
    assert message.count("field `") == 1, message


@pytest.mark.slow  # the dry run reads the teacher's shapes from its GGUF (~10 s)
def test_the_dry_run_eta_uses_a_finished_meters_throughput(tmp_path):
    from rich.console import Console

    from lite_delta.dry_run import meter_throughputs, print_plan
    from lite_delta.pipeline import Manifest, plan_stages

    recipe, run_dir = _recipe(tmp_path), tmp_path / "runs" / "m"
    assert meter_throughputs(recipe, run_dir) == {}
    (run_dir / "meter").mkdir(parents=True)
    (run_dir / "meter" / "meter.json").write_text(json.dumps({"teachers": {
        "chosen": {"ref": DEMO_MODEL, "tokens_per_s": 64.0},
        "rejected": {"ref": f"{DEMO_MODEL} requantized to Q2_K", "tokens_per_s": 128.0}}}))
    assert meter_throughputs(recipe, run_dir) == {"chosen": 64.0, "rejected": 128.0}
    out = io.StringIO()
    facts = print_plan(recipe, plan_stages(recipe, Manifest.load(run_dir), from_stage=None, until_stage=None), run_dir,
                       console=Console(file=out, width=200))
    assert facts["eta_s"]["generate"] == round(4 * 64 / 64.0 + 4 * 64 / 128.0)
    assert "measured by the meter" in out.getvalue()
    other = _recipe(tmp_path).model_copy(update={"teachers": recipe.teachers.model_copy(update={"rejected": "b.gguf"})})
    assert meter_throughputs(other, run_dir) == {}  # another teacher: the meter's figures do not apply


def test_a_negative_meter_stops_lite_delta_run_before_generating_and_continue_goes_on(tmp_path, capsys):
    import yaml

    from lite_delta.config import load_recipe
    from lite_delta.meter.stage import settings_digest
    from lite_delta.pipeline import meter_config

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "neg", "prompts": {"source": "builtin:demo", "n": 2},
                                    "teachers": {"chosen": DEMO_MODEL, "rejected": {"derive": "Q2_K"}},
                                    "meter": {"enabled": True}}))
    run_dir = tmp_path / "runs" / "neg"
    cfg = meter_config(load_recipe(path), run_dir)
    cfg.out.mkdir(parents=True)
    (cfg.out / "meter.md").write_text("| gsm8k | 100 | 20.0 | 60.0 | -40.0 |\n")
    (cfg.out / "meter.json").write_text(json.dumps({"settings_digest": settings_digest(cfg), "overall": {
        "verdict": NEGATIVE, "diff": -0.4, "ci95": [-0.5, -0.3], "measure": "gsm8k"}}))  # a finished meter, reused
    err = _fails(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--until", "generate"], capsys)
    assert "negative delta -40.0" in err and "swap" in err and "meter.on_negative: continue" in err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["meter"]["status"] == "failed" and "generate" not in manifest["stages"]
    main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--until", "meter",
          "--set", "meter.on_negative=continue"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["meter"]["status"] == "done"  # the same measurement, not measured again


@pytest.mark.slow
@needs_benchdata
def test_by_score_meters_best_against_worst_of_k_by_the_pairing_scorer(tmp_path):
    from lite_delta.config import MeterConfig
    from lite_delta.meter import meter

    cfg = MeterConfig(samples=DEMO_MODEL, tasks=["gsm8k"], limit=2, scorer="length", eval_data_dir=BENCHDATA,
                      prompts={"source": "builtin:demo"}, out=tmp_path / "m",
                      generation={"samples_per_prompt": 2, "temperature": 1.0, "max_tokens": 8, "parallel": 2,
                                  "n_threads": 1})
    result = meter(cfg, progress=False)
    assert result["mode"] == "by_score" and list(result["teachers"]) == ["samples"]
    (row,) = result["tasks"]  # by_score: the scorer task only, whatever tasks say
    assert row["task"] == "scorer" and row["n"] == 2 and row["min_delta"] == 1.0 and row["chosen"] >= row["rejected"]
    assert result["teachers"]["samples"]["answers"] == 4


def test_the_report_has_the_meters_section(tmp_path):
    from lite_delta.report import write_report

    recipe = _recipe(tmp_path)
    (tmp_path / "meter").mkdir()
    (tmp_path / "meter" / "meter.md").write_text("| gsm8k | 40 | 10.0 | 5.0 | +5.0 | [+0.0, +10.0] | too small |\n")
    write_report(recipe, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## Teachers' delta (meter, before generating)" in report and "| gsm8k | 40 |" in report
