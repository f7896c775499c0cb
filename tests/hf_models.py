"""Tiny random transformers models of each architecture the HF -> GGUF converter handles, with real tokenizers.

The tokenizers are Qwen2's and Llama 3's own vocabularies, rebuilt as `tokenizer.json` from the vocabulary
GGUFs llama.cpp ships for its tokenizer tests (`models/ggml-vocab-{qwen2,llama-bpe}.gguf`: tokens, token
types and merges) with the pre-tokenizer those models publish. A rebuilt tokenizer is checked against
llama.cpp's own test cases (`.gguf.inp` / `.gguf.out`) before use, so llama.cpp's converter recognises
it as the real one (it identifies pre-tokenizers by hashing the ids of a test string).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# The pre-tokenizer regexes of the published tokenizer.json files (Qwen2/2.5/3 and Llama 3.x)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
TOKENIZERS = {
    # name: (vocab GGUF, split regex, ignore_merges, bos added by the post-processor, template file)
    "qwen2": ("ggml-vocab-qwen2.gguf", QWEN2_SPLIT, False, None, "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "qwen3": ("ggml-vocab-qwen2.gguf", QWEN2_SPLIT, False, None, "Qwen-Qwen3-0.6B.jinja"),
    "llama3": ("ggml-vocab-llama-bpe.gguf", LLAMA3_SPLIT, True, "<|begin_of_text|>",
               "meta-llama-Llama-3.1-8B-Instruct.jinja"),
}
PAD = re.compile(r"^\[PAD\d+\]$")


def write_tokenizer(kind: str, folder: Path, llama_src: Path) -> dict:
    """tokenizer.json + tokenizer_config.json (+ chat template) in `folder`; returns the special token ids."""
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab_file, split, ignore_merges, bos, template = TOKENIZERS[kind]
    reader = gguf.GGUFReader(str(llama_src / "models" / vocab_file))
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    keep = [i for i, t in enumerate(tokens) if not PAD.match(t)]
    assert keep == list(range(len(keep))), "padding tokens only at the end"
    vocab = {tokens[i]: i for i in keep}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    control = [tokens[i] for i in keep if types[i] == gguf.TokenType.CONTROL]
    user = [tokens[i] for i in keep if types[i] == gguf.TokenType.USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, vocab[bos])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    eos = "<|eot_id|>" if kind == "llama3" else "<|im_end|>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos,
        pad_token="<|end_of_text|>" if kind == "llama3" else "<|endoftext|>",
        chat_template=(llama_src / "models" / "templates" / template).read_text(encoding="utf-8"),
    )
    if kind == "llama3":
        fast.add_bos_token = True
    fast.save_pretrained(str(folder))
    check_tokenizer(folder, llama_src / "models" / vocab_file)
    return {"bos": fast.bos_token_id, "eos": fast.eos_token_id, "pad": fast.pad_token_id,
            "vocab": len(tokens)}


def check_tokenizer(folder: Path, vocab_gguf: Path) -> None:
    """The rebuilt tokenizer gives llama.cpp's expected ids on llama.cpp's own tokenizer test inputs."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    inputs = Path(str(vocab_gguf) + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    outputs = Path(str(vocab_gguf) + ".out").read_text(encoding="utf-8").split("\n")
    assert len(inputs) > 10 and len(outputs) >= len(inputs)
    for text, expected in zip(inputs, outputs):
        ids = tokenizer.encode(text, add_special_tokens=False)
        want = [int(x) for x in expected.split()]
        assert ids == want, f"rebuilt tokenizer differs from llama.cpp's test case {text!r}: {ids} != {want}"


def write_tiny_hf(kind: str, folder: Path, llama_src: Path, *, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """A 2-layer random model of `kind` (llama3: Llama-3.1-shaped with llama3 RoPE scaling, untied;
    qwen2: tied embeddings and q/k/v biases; qwen3: q/k norms, head_dim != hidden/heads), saved as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(kind, folder, llama_src)
    common = dict(vocab_size=ids["vocab"], hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                  pad_token_id=ids["pad"])
    if kind == "llama3":
        config = LlamaConfig(**common, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
                             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              # 8192 in Llama 3.1; short here so the scaling shows in short prompts
                                              "original_max_position_embeddings": 64})
    elif kind == "qwen2":
        config = Qwen2Config(**common, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    else:
        config = Qwen3Config(**common, head_dim=32, max_position_embeddings=40960, rms_norm_eps=1e-6,
                             tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    with torch.no_grad():  # random norms and biases, so a converter that drops or swaps them is caught
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    if kind == "llama3":  # the layout of Llama 3.1's config.json on the Hub: rope_theta + rope_scaling
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        rope = data.pop("rope_parameters")
        data["rope_theta"] = rope.pop("rope_theta")
        data["rope_scaling"] = rope
        (folder / "config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (folder / "tiny.json").write_text(json.dumps({"kind": kind, "seed": seed}) + "\n", encoding="utf-8")
    return folder
