"""The VRAM planner: shapes from config.json or GGUF metadata, never the weights; fits per card."""

from __future__ import annotations

import json

import pytest

from lite_delta.cli import main
from lite_delta.errors import LiteDeltaError
from lite_delta.train.plan import estimate, fit, load_shapes, plan, shapes_from_config
from lite_delta.models.student import prepare_student

# Llama-3.1-8B's published config.json (the fields the planner reads).
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False, "head_dim": 128,
}


@pytest.fixture
def llama_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_31_8B))
    return tmp_path


def test_parameter_counts_match_the_published_figures(llama_dir):
    shapes = load_shapes(str(llama_dir))
    assert round(shapes.params / 1e9, 2) == 8.03  # Llama-3.1-8B: 8,030,261,248 parameters
    assert shapes.lora_params(16) == 41_943_040  # PEFT's trainable count for r=16 on all projections


def test_gguf_metadata_and_converted_config_agree(tiny_gguf, tmp_path):
    """The same model read from its GGUF and from the transformers folder made of it: same shapes, and
    the parameter count equals the count of the real model's tensors."""
    from transformers import AutoModelForCausalLM

    folder = prepare_student(str(tiny_gguf), tmp_path)
    from_gguf = load_shapes(str(tiny_gguf))
    from_config = load_shapes(folder)
    assert from_gguf == from_config
    model = AutoModelForCausalLM.from_pretrained(folder)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert from_config.params == model.num_parameters() - norms


def test_estimate_grows_with_batch_length_and_rank(llama_dir):
    shapes = load_shapes(str(llama_dir))
    base = estimate(shapes, batch_size=1, max_length=1024).total_gib
    assert estimate(shapes, batch_size=2, max_length=1024).total_gib > base
    assert estimate(shapes, batch_size=1, max_length=2048).total_gib > base
    assert estimate(shapes, batch_size=1, max_length=1024, lora_r=64).total_gib > base
    # 4-bit weights of an 8B model: between 4 and 7 GiB (NF4 linears + 16-bit embeddings and head)
    assert 4 < estimate(shapes, batch_size=1, max_length=1024).weights_gib < 7


def test_fit_respects_the_card_and_keeps_the_global_batch(llama_dir):
    shapes = load_shapes(str(llama_dir))
    fits = {gb: fit(shapes, gb, max_length=2048, global_batch=8) for gb in (8, 12, 16, 24, 80)}
    for gb, f in fits.items():
        if f is None:
            continue
        assert f.estimate_gib <= gb * 0.9 * 1e9 / 1024**3
        assert f.batch_size * f.grad_accum >= 8
    assert fits[8] is None or fits[8].max_length < 2048
    assert fits[24].max_length == 2048
    tokens = {gb: f.batch_size * f.max_length for gb, f in fits.items() if f}
    assert list(tokens.values()) == sorted(tokens.values())  # more memory, never a smaller step


def test_plan_cli_json_for_a_config_only_folder(llama_dir, capsys):
    main(["plan", "--student", str(llama_dir), "--gpu-mem", "24", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["params_billion"] == pytest.approx(8.03, abs=0.01)
    assert result["fits"]["24.0"]["max_length"] == 2048
    assert result == plan(str(llama_dir), [24.0])


def test_plan_needs_no_weights_for_the_hub_case(tmp_path, monkeypatch):
    """A Hub id fetches config.json only; offline and uncached, it says how to get that one file."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(LiteDeltaError, match="hf download meta-llama/Llama-3.1-8B config.json"):
        load_shapes("meta-llama/Llama-3.1-8B")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"hidden_size": 8}), "no num_attention_heads"),
        (json.dumps([1, 2]), "not a JSON object"),
    ],
)
def test_bad_configs_exit_2_naming_the_problem(tmp_path, capsys, content, message):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--student", str(tmp_path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_text_config_of_multimodal_wrappers_is_read():
    shapes = shapes_from_config({"text_config": LLAMA_31_8B, "tie_word_embeddings": False})
    assert shapes.layers == 32
