"""Random-weight GGUF stand-ins: real shapes and a real tokenizer, for tests and speed benchmarks.

Speed and memory do not depend on the weights' values, so a Llama-architecture file with random
weights, a BPE vocabulary copied from an existing GGUF and that file's chat template behaves
like the real model for llama.cpp in every way but the quality of its text. Needs the `gguf`
package (the `test` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# llama.cpp file types (enum llama_ftype) accepted by `quantize`.
FTYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}

_TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
)


@dataclass(frozen=True)
class LlamaShape:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx: int = 2048
    rope_base: float = 10000.0
    n_vocab: int | None = None  # None: the copied tokenizer's size; more pads it with unused tokens (as converters do)


# Real shapes for benchmarks: the copied tokenizer's vocabulary padded to the real model's size.
SHAPES = {
    "tiny": LlamaShape(),
    "smollm2-135m": LlamaShape(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536, n_ctx=8192),
    "qwen2.5-1.5b": LlamaShape(n_embd=1536, n_layer=28, n_head=12, n_head_kv=2, n_ff=8960, n_ctx=32768,
                               n_vocab=151936),
    "qwen2.5-3b": LlamaShape(n_embd=2048, n_layer=36, n_head=16, n_head_kv=2, n_ff=11008, n_ctx=32768,
                             n_vocab=151936),
    "llama-3.1-8b": LlamaShape(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_ctx=131072,
                               n_vocab=128256),
}


def _tokenizer_fields(source: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(source))
    fields = {}
    for key in _TOKENIZER_KEYS:
        field = reader.fields.get(key)
        if field is not None:
            fields[key] = field.contents()
    return fields


def write_random_gguf(
    path: str | Path,
    *,
    tokenizer_from: str | Path,
    shape: LlamaShape = LlamaShape(),
    seed: int = 0,
    chat_template: str | None = None,
    add_bos: bool | None = None,
    bos_token_id: int | None = None,
    arch: str = "llama",
) -> Path:
    """Write an F16 GGUF with random weights and a copied tokenizer + chat template.

    `arch` is "llama" or "qwen2" (the same blocks plus biases on the q/k/v projections)."""
    import gguf

    path = Path(path)
    tok = _tokenizer_fields(Path(tokenizer_from))
    if chat_template is not None:
        tok["tokenizer.chat_template"] = chat_template
    if add_bos is not None:
        tok["tokenizer.ggml.add_bos_token"] = add_bos
    if bos_token_id is not None:
        tok["tokenizer.ggml.bos_token_id"] = bos_token_id
    n_vocab = len(tok["tokenizer.ggml.tokens"])
    if shape.n_vocab is not None and shape.n_vocab > n_vocab:
        pad = shape.n_vocab - n_vocab
        pads = [f"[PAD{i}]" for i in range(n_vocab, shape.n_vocab)]
        tok["tokenizer.ggml.tokens"] = list(tok["tokenizer.ggml.tokens"]) + pads
        tok["tokenizer.ggml.token_type"] = list(tok["tokenizer.ggml.token_type"]) + [5] * pad  # 5: UNUSED
        n_vocab = shape.n_vocab
    head_dim = shape.n_embd // shape.n_head
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be llama or qwen2, not {arch!r}")
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name(f"lite-delta random {arch}")
    w.add_context_length(shape.n_ctx)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(shape.rope_base)
    w.add_vocab_size(n_vocab)
    w.add_file_type(FTYPES["F16"])
    w.add_tokenizer_model(tok["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in tok:
        w.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    w.add_token_list(tok["tokenizer.ggml.tokens"])
    w.add_token_types(tok["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.merges" in tok:
        w.add_token_merges(tok["tokenizer.ggml.merges"])
    for key, add in (
        ("tokenizer.ggml.bos_token_id", w.add_bos_token_id),
        ("tokenizer.ggml.eos_token_id", w.add_eos_token_id),
        ("tokenizer.ggml.unknown_token_id", w.add_unk_token_id),
        ("tokenizer.ggml.padding_token_id", w.add_pad_token_id),
        ("tokenizer.ggml.add_bos_token", w.add_add_bos_token),
        ("tokenizer.chat_template", w.add_chat_template),
    ):
        if key in tok:
            add(tok[key])

    rng = np.random.default_rng(seed)

    def weight(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)

    ones = np.ones(shape.n_embd, dtype=np.float32)
    kv = shape.n_head_kv * head_dim
    w.add_tensor("token_embd.weight", weight(n_vocab, shape.n_embd))
    for i in range(shape.n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.attn_q.weight", weight(shape.n_embd, shape.n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", weight(kv, shape.n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", weight(kv, shape.n_embd))
        if arch == "qwen2":
            for proj, rows in (("q", shape.n_embd), ("k", kv), ("v", kv)):
                w.add_tensor(f"blk.{i}.attn_{proj}.bias", weight(rows).astype(np.float32))
        w.add_tensor(f"blk.{i}.attn_output.weight", weight(shape.n_embd, shape.n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weight(shape.n_ff, shape.n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weight(shape.n_ff, shape.n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", weight(shape.n_embd, shape.n_ff))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", weight(n_vocab, shape.n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize(src: str | Path, dst: str | Path, ftype: str = "Q8_0") -> Path:
    """Quantize a GGUF with llama.cpp's own quantizer (e.g. Q8_0, Q4_K_M)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {ftype}) failed with code {rc}")
    return Path(dst)
