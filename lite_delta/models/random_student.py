"""Random-weight transformers students at real shapes (e.g. Llama-3.1-8B), written shard by shard.

For training benchmarks: speed and memory of a QLoRA DPO step do not depend on the weights' values,
so a Llama folder with random bf16 weights, a copied tokenizer and the real config's shapes stands in
for the real model. Shards are generated and written one at a time (on the GPU when there is one), so
a 16 GB model needs only one shard's worth of memory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lite_delta.errors import LiteDeltaError

GIB = 1024**3


@dataclass(frozen=True)
class StudentShape:
    vocab: int = 49152
    hidden: int = 64
    layers: int = 2
    intermediate: int = 128
    heads: int = 4
    kv_heads: int = 2
    head_dim: int | None = None
    max_position: int = 2048
    rope_theta: float = 10000.0
    tie_embeddings: bool = False

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads


STUDENT_SHAPES = {
    "tiny": StudentShape(),
    # meta-llama/Llama-3.1-8B's config.json (the shapes; RoPE scaling is left out, it changes no memory)
    # meta-llama/Llama-3.2-3B's config.json (tied embeddings; RoPE scaling left out)
    "llama-3.2-3b": StudentShape(vocab=128256, hidden=3072, layers=28, intermediate=8192, heads=24, kv_heads=8,
                                 head_dim=128, max_position=131072, rope_theta=500000.0, tie_embeddings=True),
    "llama-3.1-8b": StudentShape(vocab=128256, hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8,
                                 head_dim=128, max_position=131072, rope_theta=500000.0),
}


def tensor_plan(shape: StudentShape) -> list[tuple[str, tuple[int, ...]]]:
    """Every parameter of a LlamaForCausalLM of this shape, by its transformers name, in file order."""
    q, kv = shape.heads * shape.dim, shape.kv_heads * shape.dim
    plan = [("model.embed_tokens.weight", (shape.vocab, shape.hidden))]
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        plan += [
            (p + "input_layernorm.weight", (shape.hidden,)),
            (p + "self_attn.q_proj.weight", (q, shape.hidden)),
            (p + "self_attn.k_proj.weight", (kv, shape.hidden)),
            (p + "self_attn.v_proj.weight", (kv, shape.hidden)),
            (p + "self_attn.o_proj.weight", (shape.hidden, q)),
            (p + "post_attention_layernorm.weight", (shape.hidden,)),
            (p + "mlp.gate_proj.weight", (shape.intermediate, shape.hidden)),
            (p + "mlp.up_proj.weight", (shape.intermediate, shape.hidden)),
            (p + "mlp.down_proj.weight", (shape.hidden, shape.intermediate)),
        ]
    plan.append(("model.norm.weight", (shape.hidden,)))
    if not shape.tie_embeddings:
        plan.append(("lm_head.weight", (shape.vocab, shape.hidden)))
    return plan


def _shards(plan, bytes_per_value: int, shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards, current, size = [], [], 0
    for name, dims in plan:
        n = bytes_per_value
        for d in dims:
            n *= d
        if current and size + n > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, dims))
        size += n
    return shards + [current] if current else shards


def write_random_student(
    folder: str | Path,
    *,
    tokenizer_from: str | Path,
    shape: StudentShape = StudentShape(),
    dtype: str = "bfloat16",
    shard_gib: float = 2.0,
    seed: int = 0,
    device: str | None = None,
) -> Path:
    """A Llama model folder (config.json, generation_config.json, tokenizer, safetensors shards + index)
    with random weights; `tokenizer_from` is a folder whose tokenizer (and chat template) is copied."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    if len(tokenizer) > shape.vocab:
        raise LiteDeltaError(f"the tokenizer of {tokenizer_from} has {len(tokenizer)} tokens, more than the "
                             f"shape's vocabulary of {shape.vocab}")
    tokenizer.save_pretrained(str(folder))
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.dim, max_position_embeddings=shape.max_position, rope_theta=shape.rope_theta,
        tie_word_embeddings=shape.tie_embeddings, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5,
    )
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = dtype
    config.save_pretrained(str(folder))
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos).save_pretrained(str(folder))

    torch_dtype = getattr(torch, dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device=device).manual_seed(seed)
    size = torch.tensor([], dtype=torch_dtype).element_size()
    shards = _shards(tensor_plan(shape), size, int(shard_gib * GIB))
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
    weight_map, total = {}, 0
    for name, shard in zip(names, shards):
        tensors = {}
        for key, dims in shard:
            if key.endswith("norm.weight"):
                t = torch.ones(dims, dtype=torch_dtype)
            else:
                t = (torch.randn(dims, generator=generator, device=device, dtype=torch.float32) * 0.02).to(torch_dtype)
            tensors[key] = t.cpu().contiguous()
            weight_map[key] = name
            total += tensors[key].numel() * size
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    (folder / "random_student.json").write_text(
        json.dumps({"shape": asdict(shape), "dtype": dtype, "seed": seed, "bytes": total}, indent=2) + "\n",
        encoding="utf-8")
    return folder
