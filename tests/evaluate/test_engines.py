"""The transformers evaluation engine's precision, quantization and batch size: chosen from the card and
the recipe (`evaluate.suite`), recorded in the engine's identity, and honoured by generation."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BENCHDATA, BENCHDATA_SKIP

from lite_delta.cli import main
from lite_delta.errors import LiteDeltaError
from lite_delta.evaluate.engines import GenParams, GenRequest, TransformersEngine, transformers_precision
from lite_delta.evaluate.tasks import Prompt

T4, A100 = (7, 5), (8, 0)


@pytest.mark.parametrize(
    "precision, quantization, capability, expected",
    [
        ("auto", "auto", T4, ("fp16", "nf4")),  # no bf16 on a T4: fp16 compute, never emulated bf16
        ("auto", "auto", A100, ("bf16", "nf4")),
        ("auto", "auto", None, ("fp32", "none")),  # the CPU: full precision, as PEFT trains there
        ("fp16", "auto", A100, ("fp16", "nf4")),
        ("auto", "none", A100, ("bf16", "none")),
        ("fp32", "auto", T4, ("fp32", "nf4")),
        ("auto", "nf4", None, ("fp32", "nf4")),  # bitsandbytes' CPU kernels
    ],
)
def test_precision_and_quantization_follow_the_card_and_the_recipe(precision, quantization, capability, expected):
    assert transformers_precision(precision, quantization, capability) == expected


@pytest.mark.parametrize(
    "precision, quantization, capability, message",
    [
        ("bf16", "auto", T4, r"compute 7\.5\) has no bf16"),
        ("fp16", "auto", None, "needs a CUDA GPU"),
        ("bf16", "none", None, "needs a CUDA GPU"),
        ("auto", "int8", A100, "auto, nf4 or none"),
    ],
)
def test_impossible_choices_are_refused_with_the_fix(precision, quantization, capability, message):
    with pytest.raises(LiteDeltaError, match=message):
        transformers_precision(precision, quantization, capability)


def test_suite_config_defaults_keep_the_old_behaviour():
    from lite_delta.config import SuiteEvalConfig

    s = SuiteEvalConfig()
    assert (s.batch_size, s.precision, s.quantization) == (8, "auto", "auto")


def _generate_calls(engine, n_requests: int) -> list[tuple[int, int]]:
    """Shapes of the input batches `engine` hands to model.generate for n one-token requests."""
    calls = []
    generate = engine.model.generate

    def counting(**kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return generate(**kwargs)

    engine.model.generate = counting
    requests = [GenRequest(str(i), Prompt(text=f"Item {i}:" + " word" * i), seed=i) for i in range(n_requests)]
    done = list(engine.generate(requests, GenParams(max_tokens=1)))
    assert sorted(key for key, _, _ in done) == sorted(str(i) for i in range(n_requests))
    return calls


def test_transformers_engine_generates_in_batches_of_the_setting(tiny_student, tmp_path):
    """A real tiny model on the CPU: 7 requests at batch_size 3 are three generate calls of 3, 3 and 1."""
    engine = TransformersEngine(tiny_student, cache_dir=tmp_path, batch_size=3)
    try:
        assert engine.identity["precision"] == "fp32" and engine.quantization == "none"
        assert [rows for rows, _ in _generate_calls(engine, 7)] == [3, 3, 1]
    finally:
        engine.close()


@pytest.mark.slow
def test_nf4_on_the_cpu_loads_4bit_weights_and_says_so(tiny_student, tmp_path):
    from bitsandbytes.nn import Linear4bit

    engine = TransformersEngine(tiny_student, cache_dir=tmp_path, batch_size=4, quantization="nf4")
    try:
        assert engine.identity["precision"] == "nf4/fp32"
        assert any(isinstance(m, Linear4bit) for m in engine.model.modules())
        assert [rows for rows, _ in _generate_calls(engine, 5)] == [4, 1]
    finally:
        engine.close()


class FakeEngine:
    """Stands in for TransformersEngine: records what it was opened with, answers every prompt alike."""

    opened: list[dict] = []

    def __init__(self, model, **kwargs):
        FakeEngine.opened.append({"model": model, **kwargs})
        self.identity = {"engine": "transformers", "model": model, "precision": kwargs["precision"]}

    def render(self, prompt):
        return prompt.text or str(prompt.messages)

    def generate(self, requests, params):
        for r in requests:
            yield r.key, "The answer is 42.", "stop"

    def close(self):
        pass


@pytest.mark.skipif(not BENCHDATA.is_dir(), reason=BENCHDATA_SKIP)
def test_recipe_suite_settings_reach_the_engine_for_base_and_tuned(tmp_path, monkeypatch):
    """`lite-delta run`'s evaluate stage opens the transformers engine with the recipe's batch size, precision
    and quantization, the same for the base and the tuned student."""
    import lite_delta.evaluate.engines as engines
    import lite_delta.pipeline as pipeline
    from lite_delta.config import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "colab-t4.yaml")
    suite = recipe.evaluate.suite.model_copy(update=dict(tasks=["gsm8k"], limit=1, data_dir=BENCHDATA, batch_size=3,
                                                         precision="fp16", quantization="nf4"))
    recipe = recipe.model_copy(update={"evaluate": recipe.evaluate.model_copy(update={"suite": suite})})
    monkeypatch.setattr(pipeline, "eval_student", lambda r, d, engine="auto": ("STUDENT", tmp_path / "adapter", "transformers"))
    monkeypatch.setattr(engines, "TransformersEngine", FakeEngine)
    FakeEngine.opened = []
    pipeline.run_evaluate(recipe, tmp_path / "run")
    assert [(o["adapter"], o["batch_size"], o["precision"], o["quantization"]) for o in FakeEngine.opened] == [
        (None, 3, "fp16", "nf4"), (tmp_path / "adapter", 3, "fp16", "nf4")]


def test_eval_cli_refuses_an_unknown_quantization(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", "x.gguf", "--out", str(tmp_path), "--quantization", "int8"])
    assert exit_.value.code == 2 and "--quantization must be auto, nf4 or none" in capsys.readouterr().err


def _pickled_adapter(tiny_student, folder: Path, *, keep_safetensors: bool) -> Path:
    """A real PEFT adapter for the tiny student, saved as a pickle (adapter_model.bin), with or without the
    safetensors beside it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_student),
                           LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(folder, safe_serialization=False)
    if keep_safetensors:
        model.save_pretrained(folder)
    return folder


def test_a_pickle_only_adapter_is_refused_without_unpickling(tiny_student, tmp_path):
    adapter = _pickled_adapter(tiny_student, tmp_path / "pickled", keep_safetensors=False)
    assert (adapter / "adapter_model.bin").is_file()
    with pytest.raises(LiteDeltaError, match="has no adapter_model.safetensors: lite-delta loads weights as safetensors"):
        TransformersEngine(tiny_student, adapter=adapter, cache_dir=tmp_path)


def test_an_adapter_peft_cannot_load_is_one_clear_error(tiny_student, tmp_path):
    adapter = _pickled_adapter(tiny_student, tmp_path / "bad", keep_safetensors=True)
    config = adapter / "adapter_config.json"
    config.write_text(config.read_text().replace('"q_proj"', '"no_such_proj"'))
    with pytest.raises(LiteDeltaError, match="PEFT cannot load the adapter"):
        TransformersEngine(tiny_student, adapter=adapter, cache_dir=tmp_path)
