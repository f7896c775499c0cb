"""The shipped recipes: each loads, and each GPU recipe's train settings fit its card per the planner."""

from __future__ import annotations

from pathlib import Path

import pytest

from lite_delta.config import load_recipe
from lite_delta.train.plan import GIB, estimate, shapes_from_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# The students' published config.json fields (the Hub is not reachable from tests).
QWEN25_3B_INSTRUCT_CONFIG = {  # Qwen/Qwen2.5-3B-Instruct/config.json
    "hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16, "num_hidden_layers": 36,
    "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
}
TULU3_8B_SFT_CONFIG = {  # allenai/Llama-3.1-Tulu-3-8B-SFT/config.json (Llama 3.1 8B, Tulu 3's 128264 tokens)
    "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "vocab_size": 128264, "tie_word_embeddings": False, "head_dim": 128,
}

# recipe -> (its student, that student's config, the card it is written for in GB)
GPU_RECIPES = {
    "colab-t4": ("Qwen/Qwen2.5-3B-Instruct", QWEN25_3B_INSTRUCT_CONFIG, 16),
    "gpu-12gb": ("Qwen/Qwen2.5-3B-Instruct", QWEN25_3B_INSTRUCT_CONFIG, 12),
    "paper-8b-24gb": ("allenai/Llama-3.1-Tulu-3-8B-SFT", TULU3_8B_SFT_CONFIG, 24),
}


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem


def test_every_gpu_recipe_is_checked():
    with_training = {p.stem for p in RECIPES.glob("*.yaml") if load_recipe(p).train and p.stem != "demo"}
    assert with_training == set(GPU_RECIPES)


@pytest.mark.parametrize("name", sorted(GPU_RECIPES))
def test_train_settings_fit_the_card(name):
    student, config, gpu_gb = GPU_RECIPES[name]
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.student == student
    t = recipe.train
    assert (t.loss, t.beta) == ("sigmoid_norm", 5.0)  # the paper's loss and beta
    assert 5e-6 <= t.learning_rate <= 5e-5  # a LoRA-sized lr (BRIEF §2), not full fine-tuning's 5e-8
    peak = estimate(shapes_from_config(config), batch_size=t.batch_size, max_length=t.max_length, lora_r=t.lora_r)
    budget = gpu_gb * 0.9 * 1e9 / GIB  # the planner's headroom: 10 % of the card left free
    assert peak.total_gib <= budget, f"{name}: ~{peak.total_gib:.1f} GiB on a {gpu_gb} GB card"


def test_paper_recipe_keeps_the_papers_global_batch():
    t = load_recipe(RECIPES / "paper-8b-24gb.yaml").train
    assert t.batch_size * t.grad_accum == 32


def test_colab_t4_uses_fp16():
    # A T4 (compute 7.5) has no bf16; `auto` would pick fp16 too, but the recipe says so outright.
    assert load_recipe(RECIPES / "colab-t4.yaml").train.precision == "fp16"


@pytest.mark.parametrize("name", sorted(GPU_RECIPES))
def test_gpu_recipes_follow_the_papers_structure(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.pairing.mode == "by_model"
    assert recipe.prompts.source == "allenai/llama-3.1-tulu-3-8b-preference-mixture"
    assert recipe.prompts.column == "chosen"
    assert recipe.generation.temperature == 0.0 and recipe.generation.samples_per_prompt == 1
    assert recipe.evaluate and recipe.evaluate.suite and recipe.evaluate.suite.limit


@pytest.mark.parametrize("name", sorted(GPU_RECIPES))
def test_gpu_recipes_convert_their_student_and_evaluate_it_on_llama_cpp(name):
    from lite_delta.pipeline import exports, student_conversion

    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.student_gguf is None and recipe.student_convert.enabled
    assert recipe.student_convert.eval_quant == "Q8_0" and recipe.evaluate.suite.engine == "auto"
    assert student_conversion(recipe).state == "convert" and exports(recipe)
