"""The utility eval: real transformers sampling on a tiny random model (resume, seeds, settings check,
adapter identity), and the statistics and chart on synthetic runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lite_delta.config import UtilityEvalConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.evaluate.utility import SAMPLES_FILE, compare_utility, utility_chart, utility_eval


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory, tiny_gguf) -> str:
    from lite_delta.models.student import prepare_student

    return prepare_student(str(tiny_gguf), tmp_path_factory.mktemp("tiny_student"))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "heldout.jsonl"
    prompts = ["List three fruits.", "How do I boil an egg?", "Name some colours."]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    return path


def config(prompts_file, **changes) -> UtilityEvalConfig:
    fields = dict(prompts={"source": str(prompts_file)}, samples_per_prompt=2, temperature=1.0, max_tokens=6,
                  seed=1, batch_size=4)
    return UtilityEvalConfig.model_validate({**fields, **changes})


def lines(path) -> list[dict]:
    return [json.loads(line) for line in (path / SAMPLES_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_student, prompts_file):
    out = tmp_path_factory.mktemp("u") / "base"
    result = utility_eval(config(prompts_file), student=tiny_student, adapter=None, scorer="length", out=out,
                          progress=False)
    return out, result


def test_writes_every_answer_once_with_summary(first_run):
    out, result = first_run
    records = lines(out)
    assert len(records) == 6 and len({r["key"] for r in records}) == 6
    assert {(r["index"], r["sample"]) for r in records} == {(i, s) for i in range(3) for s in range(2)}
    assert result["n_prompts"] == 3 and result["n_samples"] == 6 and result["scorer"] == "length"
    assert result["settings"]["engine"] == "transformers" and result["settings"]["adapter"] is None
    for p in result["per_prompt"].values():
        assert p["best_of_k"] == max(p["scores"]) and p["worst_of_k"] == min(p["scores"])
        assert p["worst_of_k"] <= p["mean"] <= p["best_of_k"]
    assert result["worst_of_k_mean"] <= result["mean"] <= result["best_of_k_mean"]
    lo, hi = result["ci95"]
    assert lo <= result["mean"] <= hi
    assert json.loads((out / "utility.json").read_text())["mean"] == result["mean"]


def test_rerun_skips_finished_answers_and_a_killed_run_resumes_to_the_same_answers(
        first_run, tiny_student, prompts_file, tmp_path):
    out, result = first_run
    before = (out / SAMPLES_FILE).read_text()
    again = utility_eval(config(prompts_file), student=tiny_student, adapter=None, scorer="length", out=out,
                         progress=False)
    assert (out / SAMPLES_FILE).read_text() == before and again["mean"] == result["mean"]
    # a run killed after its first batch (4 answers), in the middle of writing the fifth line
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    kept = before.splitlines(keepends=True)[:4]
    (killed / SAMPLES_FILE).write_text("".join(kept) + before.splitlines()[4][:20])
    resumed = utility_eval(config(prompts_file), student=tiny_student, adapter=None, scorer="length", out=killed,
                           progress=False)
    records = lines(killed)
    assert len(records) == 6 and len({r["key"] for r in records}) == 6
    by_key = {r["key"]: r["completion"] for r in lines(out)}
    assert {r["key"]: r["completion"] for r in records} == by_key  # same seeds, same batches: same answers
    assert resumed["per_prompt"] == result["per_prompt"]


def test_other_seed_samples_other_answers_and_other_settings_are_refused(first_run, tiny_student, prompts_file,
                                                                          tmp_path):
    out, _ = first_run
    other = utility_eval(config(prompts_file, seed=2), student=tiny_student, adapter=None, scorer="length",
                         out=tmp_path / "seed2", progress=False)
    assert {r["completion"] for r in lines(tmp_path / "seed2")} != {r["completion"] for r in lines(out)}
    assert other["n_samples"] == 6
    with pytest.raises(LiteDeltaError, match="temperature"):
        utility_eval(config(prompts_file, temperature=0.5), student=tiny_student, adapter=None, scorer="length",
                     out=out, progress=False)


def test_adapter_is_applied_and_recorded(tiny_student, prompts_file, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_student),
                           LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    result = utility_eval(config(prompts_file, samples_per_prompt=1), student=tiny_student,
                          adapter=tmp_path / "adapter", scorer="list_items", out=tmp_path / "tuned", progress=False)
    assert result["settings"]["adapter"] == str(tmp_path / "adapter") and result["settings"]["adapter_sha256"]
    assert result["n_samples"] == 3 and result["scorer"] == "list_items"


def synthetic(per_prompt_means: list[float], best: list[float] | None = None, worst: list[float] | None = None) -> dict:
    best = best or per_prompt_means
    worst = worst or per_prompt_means
    return {
        "scorer": "list_items",
        "settings": {"temperature": 0.9, "samples_per_prompt": 4, "k": 4},
        "per_prompt": {f"p{i}": {"mean": m, "best_of_k": b, "worst_of_k": w}
                       for i, (m, b, w) in enumerate(zip(per_prompt_means, best, worst))},
    }


def test_a_known_effect_gives_a_ci_that_excludes_zero_and_identical_runs_give_zero(tmp_path):
    rng = np.random.default_rng(0)
    base_mean = rng.uniform(1, 3, 24)
    chosen = base_mean + rng.uniform(2, 5, 24)
    base = synthetic(list(base_mean), list(chosen), list(base_mean - 1))
    tuned = synthetic(list(chosen + 2 + rng.normal(0, 0.5, 24)))
    s = compare_utility(base, tuned)
    assert s["n_prompts"] == 24 and not s["warnings"]
    lo, hi = s["tuned_minus_chosen"]["ci95"]
    assert 0 < lo < s["tuned_minus_chosen"]["diff"] < hi and s["target_met"] and s["tuned_mean_above_chosen"]
    assert s["bars"]["rejected"]["mean"] < s["bars"]["base"]["mean"] < s["bars"]["chosen"]["mean"]
    for bar in s["bars"].values():
        assert bar["ci95"][0] <= bar["mean"] <= bar["ci95"][1]
    same = compare_utility(base, synthetic(list(chosen)))
    assert same["tuned_minus_chosen"]["diff"] == 0 and same["tuned_minus_chosen"]["ci95"] == [0.0, 0.0]
    assert not same["target_met"] and not same["tuned_mean_above_chosen"]
    utility_chart(s, tmp_path / "utility.png")
    assert (tmp_path / "utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_sft_contrast_is_paired_on_the_same_prompt_draws(tmp_path):
    rng = np.random.default_rng(1)
    base_mean = rng.uniform(1, 3, 24)
    chosen = base_mean + rng.uniform(2, 4, 24)
    base = synthetic(list(base_mean), list(chosen), list(base_mean - 1))
    sft = synthetic(list(base_mean + 0.5 * (chosen - base_mean)))  # imitation: toward the chosen level
    tuned = synthetic(list(chosen + 3 + rng.normal(0, 0.5, 24)))  # DPO: past it
    s = compare_utility(base, tuned, sft=sft)
    assert list(s["bars"]) == ["base", "rejected", "chosen", "sft", "tuned"]
    assert s["tuned_minus_sft"]["ci95"][0] > 0 and s["sft_minus_chosen"]["ci95"][1] < 0
    assert s["sft_minus_base"]["diff"] == pytest.approx(s["bars"]["sft"]["mean"] - s["bars"]["base"]["mean"])
    # the same draws for every column: DPO - SFT = (DPO - chosen) - (SFT - chosen) holds draw by draw, so means too
    assert s["tuned_minus_sft"]["diff"] == pytest.approx(s["tuned_minus_chosen"]["diff"] - s["sft_minus_chosen"]["diff"])
    assert "tuned_minus_sft" not in compare_utility(base, tuned)
    s_no_gap = compare_utility(base, tuned, sft=tuned)
    assert s_no_gap["tuned_minus_sft"]["ci95"] == [0.0, 0.0] and s_no_gap["tuned_minus_sft"]["p_not_above"] == 1.0
    sft["settings"] = {**sft["settings"], "seed": 9}
    assert any("between base and sft" in w for w in compare_utility(base, tuned, sft=sft)["warnings"])
    utility_chart(s, tmp_path / "utility.png")
    assert (tmp_path / "utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mismatched_settings_are_warned_and_disjoint_runs_refused():
    base = synthetic([1.0, 2.0])
    tuned = synthetic([1.0, 2.0])
    tuned["settings"] = {**tuned["settings"], "temperature": 0.7}
    assert any("temperature" in w for w in compare_utility(base, tuned)["warnings"])
    tuned["per_prompt"] = {"other": {"mean": 1.0, "best_of_k": 1.0, "worst_of_k": 1.0}}
    with pytest.raises(LiteDeltaError, match="share no prompt"):
        compare_utility(base, tuned)


# --- the same measure through llama.cpp's batched engine (the demo's path for a GGUF student) -------------


@pytest.fixture(scope="module")
def llama_first_run(tmp_path_factory, tiny_gguf, prompts_file):
    out = tmp_path_factory.mktemp("ul") / "base"
    result = utility_eval(config(prompts_file), student=str(tiny_gguf), adapter=None, scorer="length", out=out,
                          progress=False)
    return out, result


def test_a_gguf_student_is_sampled_by_llama_cpp_and_resumes_to_the_same_answers(llama_first_run, tiny_gguf,
                                                                                 prompts_file, tmp_path):
    out, result = llama_first_run
    assert result["settings"]["engine"] == "llama.cpp" and result["n_samples"] == 6
    records = lines(out)
    assert len({r["key"] for r in records}) == 6 and all(r["completion_tokens"] > 0 for r in records)
    assert len({r["completion"] for r in records}) > 1  # sampled, per-item seeds: not one answer six times
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    text = (out / SAMPLES_FILE).read_text()
    (killed / SAMPLES_FILE).write_text("".join(text.splitlines(keepends=True)[:3]) + text.splitlines()[3][:15])
    resumed = utility_eval(config(prompts_file), student=str(tiny_gguf), adapter=None, scorer="length", out=killed,
                           progress=False)
    assert {r["key"]: r["completion"] for r in lines(killed)} == {r["key"]: r["completion"] for r in records}
    assert resumed["per_prompt"] == result["per_prompt"]


def test_a_peft_adapter_runs_on_llama_cpp_as_an_exported_gguf_lora(llama_first_run, tiny_student, tiny_gguf,
                                                                   prompts_file, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_student),
                           LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    out, base = llama_first_run
    tuned = utility_eval(config(prompts_file), student=str(tiny_gguf), adapter=tmp_path / "adapter",
                         scorer="length", out=tmp_path / "tuned", progress=False, cache_dir=tmp_path / "cache")
    assert tuned["settings"]["engine"] == "llama.cpp" and tuned["settings"]["adapter_sha256"]
    assert list((tmp_path / "cache").glob("adapter-*.gguf"))  # exported once, reused by the next run
    base_answers = {r["key"]: r["completion"] for r in lines(out)}
    tuned_answers = {r["key"]: r["completion"] for r in lines(tmp_path / "tuned")}
    assert base_answers.keys() == tuned_answers.keys() and base_answers != tuned_answers
