"""Our HF -> GGUF converter against llama.cpp's own `convert_hf_to_gguf.py`, and against transformers.

For tiny random models of each architecture (Llama-3.1-shaped with `rope_scaling: llama3`, Qwen2 with
tied embeddings and biases, Qwen3 with q/k norms; real Qwen2 / Llama 3 tokenizers) and for the demo's
student as transformers sees it (the SmolLM2 GGUF converted to a model folder): every metadata key and
every tensor (name, shape, type, bytes) equals what llama.cpp's converter writes, but for the
differences listed below with the reason each is harmless. Then llama.cpp runs our file and its logits
match transformers' on the same model, and greedy continuations agree.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.models import hf_gguf
from tests.hf_models import write_tiny_hf
from tests.llama_cpp_reference import llama_cpp_source, run_reference

KINDS = ("llama3", "qwen2", "qwen3")
# Descriptive names llama.cpp's converter guesses from the folder name and parameter count; llama.cpp
# never reads them to run a model. Ours names the model by its folder (or Hub id).
DESCRIPTIVE = {"general.name", "general.size_label", "general.basename", "general.finetune"}
# The demo student's folder: transformers rebuilds SmolLM2's byte-level BPE tokenizer from the GGUF with
# a byte-fallback decoder, and llama.cpp's converter then reads it as a SentencePiece vocabulary (its
# LlamaHfVocab path): model "llama" with scores, no merges. That file tokenizes nothing: llama.cpp aborts
# (byte_to_token: out of range) on the first word, shown in test_reference_smollm2_vocab_aborts_llama_cpp.
# Ours keeps it byte-level BPE with its merges and tokenizes as the folder's tokenizer does.
SMOLLM2_TOKENIZER = {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.merges",
                     "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.add_space_prefix",
                     "tokenizer.ggml.add_eos_token"}  # ours: the post-processor adds no EOS, written as False
TEXTS = ["Hello world!", "The year 2024 had 366 days.", "  leading spaces\n\n\tand tabs",
         "naïve café — ünïcödé 日本語 🚀", "def f(x):\n    return x**2  # square", "I've been 'told he's there",
         "3.14159 and 1,000,000 ... !!!"]


@pytest.fixture(scope="session")
def llama_src() -> Path:
    return llama_cpp_source()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory, llama_src):
    made = {}

    def get(kind: str) -> Path:
        if kind not in made:
            made[kind] = write_tiny_hf(kind, tmp_path_factory.mktemp(f"hf-{kind}") / kind, llama_src)
        return made[kind]

    return get


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_hf, smollm2_student):
    """(ours, llama.cpp's) GGUF of each model at each dtype, made once."""
    made = {}
    out = tmp_path_factory.mktemp("converted")

    def get(kind: str, dtype: str = "f16") -> tuple[Path, Path]:
        if (kind, dtype) not in made:
            folder = Path(smollm2_student) if kind == "smollm2" else tiny_hf(kind)
            ours = hf_gguf.convert_hf_to_gguf(folder, out / f"{kind}-{dtype}-ours.gguf", dtype=dtype)
            ref = out / f"{kind}-{dtype}-llama.cpp.gguf"
            run_reference("convert_hf_to_gguf.py", str(folder), "--outfile", str(ref), "--outtype", dtype)
            made[kind, dtype] = (ours, ref)
        return made[kind, dtype]

    return get


def read(path: Path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


def differences(ours: Path, ref: Path) -> tuple[set[str], set[str]]:
    """(metadata keys that differ, tensors that differ in name, shape, type or bytes)."""
    fo, to = read(ours)
    fr, tr = read(ref)
    keys = {k for k in set(fo) | set(fr) if fo.get(k) != fr.get(k)}
    tensors = set(to) ^ set(tr)
    for name in set(to) & set(tr):
        a, b = to[name], tr[name]
        if a.tensor_type != b.tensor_type or list(a.shape) != list(b.shape) or \
                not np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)):
            tensors.add(name)
    return keys, tensors


@pytest.mark.parametrize("kind,dtype", [("llama3", "f16"), ("qwen2", "f16"), ("qwen3", "f16"), ("llama3", "bf16"),
                                        ("qwen2", "f32")])
def test_equal_to_llama_cpp_converter(converted, kind, dtype):
    ours, ref = converted(kind, dtype)
    keys, tensors = differences(ours, ref)
    assert keys <= DESCRIPTIVE, f"metadata differs from llama.cpp's converter: {sorted(keys - DESCRIPTIVE)}"
    assert not tensors, f"tensors differ from llama.cpp's converter: {sorted(tensors)}"
    fields, found = read(ours)
    if kind == "llama3":
        assert "rope_freqs.weight" in found and "output.weight" in found  # llama3 RoPE, untied head
    else:
        assert "output.weight" not in found  # tied embeddings
    assert fields["tokenizer.ggml.pre"] == {"llama3": "llama-bpe"}.get(kind, "qwen2")


def test_smollm2_student_equal_but_for_its_tokenizer(converted, smollm2_student):
    ours, ref = converted("smollm2")
    keys, tensors = differences(ours, ref)
    assert not tensors
    assert keys <= DESCRIPTIVE | SMOLLM2_TOKENIZER, sorted(keys - DESCRIPTIVE - SMOLLM2_TOKENIZER)
    import llama_cpp
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_student)
    model = llama_cpp.Llama(str(ours), vocab_only=True, verbose=False)
    for text in TEXTS + ["<|im_start|>user\nhi<|im_end|>"]:
        assert model.tokenize(text.encode(), add_bos=False, special=True) == \
            tokenizer.encode(text, add_special_tokens=False), text


def test_reference_smollm2_vocab_aborts_llama_cpp(converted):
    """Why our SmolLM2 tokenizer keys may differ from llama.cpp's converter: its file cannot tokenize."""
    _, ref = converted("smollm2")
    code = ("import llama_cpp, sys; m = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False); "
            "m.tokenize(b'Hello world', add_bos=False)")
    proc = subprocess.run([sys.executable, "-c", code, str(ref)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "out_of_range" in proc.stderr + proc.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_matches_transformers(converted, tiny_hf, kind):
    import llama_cpp
    from transformers import AutoTokenizer

    ours, _ = converted(kind)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf(kind)))
    model = llama_cpp.Llama(str(ours), vocab_only=True, verbose=False)
    for text in TEXTS:
        assert model.tokenize(text.encode(), add_bos=False, special=True) == \
            tokenizer.encode(text, add_special_tokens=False), text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False,
                                         add_generation_prompt=True)
    assert model.tokenize(chat.encode(), add_bos=False, special=True) == tokenizer.encode(chat, add_special_tokens=False)


# --- llama.cpp on our file against transformers on the model ---------------------------------------

PROMPT_TOKENS = 160  # past the tiny llama3's original context of 64, so its RoPE scaling changes the logits
LOGIT_ATOL = 1e-4  # f32 weights and KV cache on both sides: float32 summation order only (seen: <= 2e-6)


def transformers_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    import llama_cpp

    model = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=2,
                            type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)  # an f16 KV cache alone: ~1e-3
    model.eval(ids)
    logits = np.array(model.scores[: len(ids)], dtype=np.float32)
    model.close()
    return logits


def prompt_ids(folder: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text = " ".join(TEXTS) * 8
    return tokenizer.encode(text, add_special_tokens=False)[:PROMPT_TOKENS]


@pytest.fixture(scope="session")
def f32_gguf(tmp_path_factory, tiny_hf):
    made = {}

    def get(kind: str, **options) -> Path:
        key = (kind, tuple(sorted(options.items())))
        if key not in made:
            out = tmp_path_factory.mktemp("f32") / f"{kind}.gguf"
            made[key] = hf_gguf.convert_hf_to_gguf(tiny_hf(kind), out, dtype="f32", **options)
        return made[key]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_logits_match_transformers(tiny_hf, f32_gguf, kind):
    folder = tiny_hf(kind)
    ids = prompt_ids(folder)
    expected = transformers_logits(folder, ids)
    got = llama_cpp_logits(f32_gguf(kind), ids)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < LOGIT_ATOL
    assert (got.argmax(-1) == expected.argmax(-1)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_continuations_agree(tiny_hf, f32_gguf, kind):
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM

    folder = tiny_hf(kind)
    ids = prompt_ids(folder)[:40]
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.no_grad():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, min_new_tokens=24)[0][len(ids):]
    llm = llama_cpp.Llama(str(f32_gguf(kind)), n_ctx=256, verbose=False, n_threads=2)
    got = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        got.append(token)
        if len(got) == 24:
            break
    llm.close()
    assert got == expected.tolist()


def test_comparisons_catch_a_missing_permutation_or_rope_freqs(tiny_hf, f32_gguf, converted, tmp_path, monkeypatch):
    """The checks above fail when the converter is changed: llama's q/k rows left unpermuted, or Llama 3.1's
    rope_freqs dropped, are each caught by the comparison with llama.cpp's converter and by the logits."""
    folder = tiny_hf("llama3")
    ids = prompt_ids(folder)
    expected = transformers_logits(folder, ids)
    _, ref = converted("llama3", "f16")

    unpermuted = hf_gguf.convert_hf_to_gguf(folder, tmp_path / "unpermuted-f16.gguf", dtype="f16", permute=False)
    _, tensors = differences(unpermuted, ref)
    assert {"blk.0.attn_q.weight", "blk.0.attn_k.weight"} <= tensors
    assert np.abs(llama_cpp_logits(f32_gguf("llama3", permute=False), ids) - expected).max() > 100 * LOGIT_ATOL

    plan = hf_gguf.tensor_plan
    monkeypatch.setattr(hf_gguf, "tensor_plan",
                        lambda *a, **k: [row for row in plan(*a, **k) if row[0] != "rope_freqs.weight"])
    no_freqs = hf_gguf.convert_hf_to_gguf(folder, tmp_path / "no-freqs-f16.gguf", dtype="f16")
    _, tensors = differences(no_freqs, ref)
    assert "rope_freqs.weight" in tensors
    no_freqs32 = hf_gguf.convert_hf_to_gguf(folder, tmp_path / "no-freqs-f32.gguf", dtype="f32")
    assert np.abs(llama_cpp_logits(no_freqs32, ids) - expected).max() > 10 * LOGIT_ATOL


# --- the cached student GGUF and bad input -----------------------------------------------------------

def test_student_gguf_is_made_once_and_reused(tiny_hf, tmp_path):
    folder = tiny_hf("qwen2")
    path, first = hf_gguf.student_gguf(str(folder), dtype="f16", cache_dir=tmp_path)
    assert first["reused"] is False and path.is_file()
    mtime = path.stat().st_mtime_ns
    again, second = hf_gguf.student_gguf(str(folder), dtype="f16", cache_dir=tmp_path)
    assert again == path and second["reused"] is True and path.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.tmp"))


def test_estimate_is_the_written_size(tiny_hf, tmp_path):
    folder = tiny_hf("qwen3")
    estimate = hf_gguf.conversion_estimate(str(folder), "f16")
    path = hf_gguf.convert_hf_to_gguf(folder, tmp_path / "q3.gguf", dtype="f16")
    assert estimate["architecture"] == "qwen3"
    assert 0.9 < path.stat().st_size / estimate["bytes"] < 1.2  # + the tokenizer and alignment


def _copy(folder: Path, dst: Path) -> Path:
    shutil.copytree(folder, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    data = json.loads((folder / "config.json").read_text())
    data.update(changes)
    (folder / "config.json").write_text(json.dumps(data))


@pytest.mark.parametrize("case,message", [
    ("model_type", "model_type 'gemma2' does not convert"),
    ("rope", "RoPE scaling 'yarn'"),
    ("weights", "no safetensors weights"),
    ("tokenizer", "no tokenizer.json"),
    ("pre", "is not one lite-delta maps"),
])
def test_bad_models_get_one_clear_error(tiny_hf, tmp_path, case, message):
    folder = _copy(tiny_hf("qwen2"), tmp_path / "model")
    if case == "model_type":
        _edit_config(folder, model_type="gemma2")
    elif case == "rope":
        _edit_config(folder, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6})
    elif case == "weights":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif case == "tokenizer":
        (folder / "tokenizer.json").unlink()
    else:
        data = json.loads((folder / "tokenizer.json").read_text())
        data["pre_tokenizer"] = {"type": "Whitespace"}
        (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(LiteDeltaError, match=message) as info:
        hf_gguf.convert_hf_to_gguf(folder, tmp_path / "out.gguf")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.gguf").exists() and not (tmp_path / "out.gguf.tmp").exists()


def test_convert_command_writes_the_gguf_and_its_quant(tiny_hf, tmp_path):
    import llama_cpp

    from lite_delta.cli import main

    out = tmp_path / "qwen3-f16.gguf"
    main(["convert", str(tiny_hf("qwen3")), "--out", str(out), "--dtype", "f16", "--quant", "Q8_0"])
    for path in (out, tmp_path / "qwen3-f16-Q8_0.gguf"):
        llm = llama_cpp.Llama(str(path), n_ctx=64, verbose=False)
        assert len(llm.tokenize(b"Hello")) > 0
        llm.close()


@pytest.mark.parametrize("args,message", [
    (["--dtype", "f8"], "--dtype must be one of"),
    (["--quant", "Q9"], "unknown quant"),
])
def test_convert_command_refuses_bad_options_in_one_line(tiny_hf, tmp_path, capsys, args, message):
    from lite_delta.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(tiny_hf("qwen3")), "--out", str(tmp_path / "x.gguf"), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
