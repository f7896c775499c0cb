"""Random-weight stand-ins at real shapes: the sharded safetensors student and the padded-vocabulary GGUF."""

from __future__ import annotations

import json

import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.models.random_student import STUDENT_SHAPES, StudentShape, tensor_plan, write_random_student
from lite_delta.train.plan import load_shapes


def test_sharded_student_loads_with_the_planned_shapes(tmp_path, tiny_student):
    import torch
    from transformers import AutoModelForCausalLM

    shape = StudentShape(layers=3)
    folder = write_random_student(tmp_path / "s", tokenizer_from=tiny_student, shape=shape, shard_gib=0.004)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted({name for name in index["weight_map"].values()})
    assert len(shards) > 2 and all((folder / s).is_file() for s in shards)
    assert shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    assert set(index["weight_map"]) == {name for name, _ in tensor_plan(shape)}

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.bfloat16
    params = dict(model.named_parameters())
    assert {n: tuple(p.shape) for n, p in params.items()} == dict(tensor_plan(shape))
    assert index["metadata"]["total_size"] == sum(p.numel() * 2 for p in params.values())
    norms = sum(p.numel() for n, p in params.items() if "norm" in n)
    assert load_shapes(str(folder)).params == model.num_parameters() - norms  # the planner reads the same model
    weight = params["model.layers.0.mlp.up_proj.weight"].float()
    assert 0.015 < weight.std().item() < 0.025 and params["model.norm.weight"].eq(1).all()
    assert model.generation_config.eos_token_id is not None
    assert (folder / "tokenizer_config.json").is_file()


def test_llama_8b_shape_matches_the_published_parameter_count():
    plan = tensor_plan(STUDENT_SHAPES["llama-3.1-8b"])
    total = 0
    for _, dims in plan:
        n = 1
        for d in dims:
            n *= d
        total += n
    assert total == 8_030_261_248  # meta-llama/Llama-3.1-8B


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path, tiny_student):
    with pytest.raises(LiteDeltaError, match="more than the shape's vocabulary"):
        write_random_student(tmp_path / "s", tokenizer_from=tiny_student, shape=StudentShape(vocab=1000))


def test_gguf_vocabulary_is_padded_to_the_real_size(tmp_path, tiny_gguf):
    from lite_delta.inference.engine import GGUFModel
    from lite_delta.models.random_gguf import LlamaShape, write_random_gguf
    from lite_delta.train.plan import shapes_from_gguf

    path = write_random_gguf(tmp_path / "padded.gguf", tokenizer_from=tiny_gguf,
                             shape=LlamaShape(n_vocab=49152 + 64))
    assert shapes_from_gguf(path).vocab == 49152 + 64
    model = GGUFModel(path, n_gpu_layers=0)
    try:
        ids = model.tokenize_prompt(model.render([{"role": "user", "content": "Hello there"}]))
        assert ids and max(ids) < 49152  # real tokens only: the pads are never produced by the tokenizer
    finally:
        model.close()
