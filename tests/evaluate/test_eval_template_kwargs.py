"""evaluate.chat_template_kwargs: unset, the student is evaluated with train's kwargs (as trained); set, with its own;
base and tuned alike, in the suite's engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import BENCHDATA, BENCHDATA_SKIP


class Recorder:
    opened: list[dict] = []

    def __init__(self, model, **kwargs):
        Recorder.opened.append(kwargs)
        self.identity = {"engine": "transformers", "model": model}

    def render(self, prompt):
        return prompt.text or str(prompt.messages)

    def generate(self, requests, params):
        for r in requests:
            yield r.key, "The answer is 4.", "stop"

    def close(self):
        pass


@pytest.mark.parametrize("overrides, expected", [
    (["train.chat_template_kwargs.enable_thinking=false"], {"enable_thinking": False}),
    (["train.chat_template_kwargs.enable_thinking=false", "evaluate.chat_template_kwargs={}"], {}),
    (["evaluate.chat_template_kwargs.enable_thinking=true"], {"enable_thinking": True}),
    ([], {}),
])
def test_suite_engine_gets_the_students_kwargs(tmp_path, monkeypatch, overrides, expected):
    if not (BENCHDATA / "gsm8k").is_dir():
        pytest.skip(BENCHDATA_SKIP)
    import lite_delta.evaluate.engines as engines
    import lite_delta.pipeline as pipeline
    from lite_delta.config import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "colab-t4.yaml", overrides)
    suite = recipe.evaluate.suite.model_copy(update=dict(tasks=["gsm8k"], limit=1, data_dir=BENCHDATA))
    recipe = recipe.model_copy(update={"evaluate": recipe.evaluate.model_copy(update={"suite": suite,
                                                                                      "utility": None})})
    monkeypatch.setattr(pipeline, "eval_student", lambda *a, **k: ("STUDENT", tmp_path / "adapter", "transformers"))
    monkeypatch.setattr(engines, "TransformersEngine", Recorder)
    Recorder.opened = []
    pipeline.run_evaluate(recipe, tmp_path / "run")
    assert [o["chat_template_kwargs"] for o in Recorder.opened] == [expected, expected]
