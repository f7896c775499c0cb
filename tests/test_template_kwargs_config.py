"""chat_template_kwargs in recipes: validated with one clear message, left out of stage keys while empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from lite_delta.config import load_recipe
from lite_delta.errors import LiteDeltaError
from lite_delta.pipeline import stage_keys, stage_settings

REPO = Path(__file__).resolve().parents[1]
DEMO = (REPO / "recipes" / "demo.yaml").read_text()
THINKING_OFF = "  seed: 0\n  chat_template_kwargs: {enable_thinking: false}\n"


def _recipe(tmp_path, text, overrides=()):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return load_recipe(path, overrides)


@pytest.mark.parametrize(
    "value, field, says",
    [
        ("enable_thinking", "generation.chat_template_kwargs", "a mapping of template variables"),
        ("{enable-thinking: false}", "generation.chat_template_kwargs", "'enable-thinking'"),
        ("{messages: []}", "generation.chat_template_kwargs", "not messages"),
        ("{when: 2024-01-01}", "generation.chat_template_kwargs", "when is not"),
        ("{x: .nan}", "generation.chat_template_kwargs", "x is not"),
    ],
)
def test_a_bad_kwargs_value_is_one_error_naming_the_field(tmp_path, value, field, says):
    text = DEMO.replace("  seed: 0\n", f"  seed: 0\n  chat_template_kwargs: {value}\n", 1)
    with pytest.raises(LiteDeltaError) as info:
        _recipe(tmp_path, text)
    message = str(info.value)
    assert message.count("field `") == 1 and f"field `{field}`" in message and says in message


def test_bad_train_and_evaluate_kwargs_are_named_too(tmp_path):
    with pytest.raises(LiteDeltaError, match=r"field `train.chat_template_kwargs`"):
        _recipe(tmp_path, DEMO, ["train.chat_template_kwargs=[1, 2]"])
    with pytest.raises(LiteDeltaError, match=r"field `evaluate.chat_template_kwargs`"):
        _recipe(tmp_path, DEMO, ["evaluate.chat_template_kwargs.bad key=1"])


def test_kwargs_load_from_yaml_and_set(tmp_path):
    recipe = _recipe(tmp_path, DEMO.replace("  seed: 0\n", THINKING_OFF, 1),
                     ["train.chat_template_kwargs.enable_thinking=false", "evaluate.chat_template_kwargs={}"])
    assert recipe.generation.chat_template_kwargs == {"enable_thinking": False}
    assert recipe.train.chat_template_kwargs == {"enable_thinking": False}
    assert recipe.evaluate.chat_template_kwargs == {}
    assert _recipe(tmp_path, DEMO).evaluate.chat_template_kwargs is None  # unset: train's, as trained


def test_empty_kwargs_leave_stage_settings_and_keys_as_they_were(tmp_path):
    plain = _recipe(tmp_path, DEMO)
    settings = stage_settings(plain)
    assert "chat_template_kwargs" not in settings["generate"]["generation"]
    assert "chat_template_kwargs" not in settings["train"]["train"]
    assert "chat_template_kwargs" not in settings["evaluate"]["evaluate"]
    assert "keep_thinking" not in settings["pair"]["pairing"]

    keys = stage_keys(plain)
    off = stage_keys(_recipe(tmp_path, DEMO.replace("  seed: 0\n", THINKING_OFF, 1)))
    assert off["generate"] != keys["generate"]  # generation reruns (its completion keys change too)
    student = stage_keys(_recipe(tmp_path, DEMO, ["train.chat_template_kwargs.enable_thinking=false"]))
    assert student["generate"] == keys["generate"] and student["pair"] == keys["pair"]
    assert student["train"] != keys["train"]
    kept = stage_keys(_recipe(tmp_path, DEMO, ["pairing.keep_thinking=true"]))
    assert kept["generate"] == keys["generate"] and kept["pair"] != keys["pair"]
