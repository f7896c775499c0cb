"""`lite-delta export`: llama.cpp with the exported GGUF adapter (or the merged GGUF) computes what
transformers + PEFT computes, on the real SmolLM2 (llama, q/k rows permuted) and a qwen2 stand-in."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from lite_delta.cli import main
from lite_delta.errors import LiteDeltaError
from lite_delta.models.lora_gguf import (
    BaseGGUF,
    PeftLora,
    check_adapter_loads,
    export_adapter,
    gguf_lora_pairs,
    permute_qk_rows,
    read_base_gguf,
    read_peft_lora,
    write_lora_gguf,
)

PROMPTS = ["List some fruits.", "What should I bring for a day at the beach?", "How do I start keeping a journal?"]
ANSWER = "Here are a few ideas:\n- one thing\n- two things\n- three things"
GREEDY_TOKENS = 32
# Tolerances, measured on a 2-core AMD EPYC (AVX2) with the 4-step SmolLM2 adapter (worst of 164 log-probs):
# - F32 GGUF of the student's own weights + adapter vs transformers + PEFT: 0.018 (fp32 sums in another
#   order over 30 layers); an unpermuted q/k lora_b misses by 5.6, and all 3 greedy runs diverge.
ABS_TOL_F32 = 0.05
# - merged F16 GGUF: 0.144 (adapted weights rounded to F16; the untouched, tied token_embd stays Q8_0 as
#   in llama-export-lora's merge, so the output matmul rounds activations to 8 bits; 0.051 when it was F16).
ABS_TOL_F16 = 0.25
# - Q4_1 base + adapter: 1.34 worst, effect (tuned - base) off by 0.16 on average: llama.cpp rounds
#   activations to 8 bits for Q4_1 matmuls, which a strong adapter amplifies (the base alone: 0.37).
#   Greedy runs part only at near-ties of transformers' top two logits (gaps 0.32, 0.013, 0.12).
ABS_TOL_Q4_1 = 2.0
EFFECT_MEAN_TOL_Q4_1 = 0.3
NEAR_TIE = 0.5
# - F16 / BF16 adapter on the F32 weights: F16 A and B round at 2^-11 relative, BF16 at 2^-8.
ABS_TOL_16BIT = {"f16": 0.05, "bf16": 0.1}
# - qwen2 stand-in (random F16 weights, random rsLoRA): the adapter's effect agrees to EFFECT_TOL.
EFFECT_TOL = 0.05


def _ids(tokenizer, prompt: str, answer: str = "") -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return ids + (tokenizer.encode(answer, add_special_tokens=False) if answer else [])


def _next_token_logprobs(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    """log p(ids[t+1] | ids[:t+1]) for every t, from per-position logits."""
    logits = torch.from_numpy(np.asarray(logits[: len(ids) - 1], dtype=np.float32))
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()


class Transformers:
    def __init__(self, student: str, adapter=None):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
        self.model = (PeftModel.from_pretrained(model, str(adapter)) if adapter else model).eval()

    def logprobs(self, ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return _next_token_logprobs(self.model(torch.tensor([ids])).logits[0].numpy(), ids)

    def greedy(self, ids: list[int], n: int = GREEDY_TOKENS) -> list[int]:
        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out[0, len(ids):].tolist()

    def top2_gaps(self, ids: list[int], continuation: list[int]) -> list[float]:
        """Logit gap between the two likeliest tokens at each step of a continuation."""
        with torch.no_grad():
            logits = self.model(torch.tensor([ids + continuation])).logits[0, len(ids) - 1: -1]
        top = torch.topk(logits, 2).values
        return (top[:, 0] - top[:, 1]).tolist()


class LlamaCpp:
    def __init__(self, gguf, lora=None):
        import llama_cpp

        from lite_delta.inference.engine import cpu_extra_buffers, llama_model_params

        with llama_model_params(use_extra_bufts=cpu_extra_buffers()):
            self.llm = llama_cpp.Llama(model_path=str(gguf), lora_path=str(lora) if lora else None, n_ctx=512,
                                       logits_all=True, verbose=False, seed=0)

    def logprobs(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return _next_token_logprobs(self.llm.scores[: len(ids)], ids)

    def greedy(self, ids: list[int], n: int = GREEDY_TOKENS) -> list[int]:
        self.llm.reset()
        self.llm.eval(ids)
        out = []
        for _ in range(n):  # end-of-turn tokens included: always n tokens
            out.append(int(np.argmax(self.llm.scores[self.llm.n_tokens - 1])))
            self.llm.eval([out[-1]])
        return out

    def close(self):
        self.llm.close()


def _measure(engine, sequences) -> np.ndarray:
    return np.concatenate([engine.logprobs(ids) for ids in sequences])


@pytest.fixture(scope="module")
def smollm2(smollm2_student, smollm2_adapter):
    """transformers + PEFT on the dequantized student: base and tuned log-probs, tuned greedy continuations."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_student)
    teacher_forced = [_ids(tokenizer, p, ANSWER) for p in PROMPTS]
    prompts = [_ids(tokenizer, p) for p in PROMPTS]
    tuned = Transformers(smollm2_student, smollm2_adapter)
    with tuned.model.disable_adapter():
        base_lp = _measure(tuned, teacher_forced)
    greedy = [tuned.greedy(ids) for ids in prompts]
    return {"sequences": teacher_forced, "prompts": prompts, "base": base_lp, "tuned": _measure(tuned, teacher_forced),
            "greedy": greedy, "greedy_gaps": [tuned.top2_gaps(ids, g) for ids, g in zip(prompts, greedy)]}


@pytest.fixture(scope="module")
def smollm2_f32(tmp_path_factory, smollm2_gguf):
    """The student's own weights for llama.cpp: the Q4_1 GGUF dequantized to F32, nothing added."""
    from lite_delta.models.merge_gguf import write_float_gguf

    return write_float_gguf(read_base_gguf(smollm2_gguf), tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf",
                            dtype="f32", copy_untouched=False)


def _cpp(gguf, lora, reference, greedy: bool = True) -> tuple[np.ndarray, list[list[int]]]:
    engine = LlamaCpp(gguf, lora)
    try:
        lp = _measure(engine, reference["sequences"])
        return lp, [engine.greedy(ids) for ids in reference["prompts"]] if greedy else []
    finally:
        engine.close()


def test_gguf_adapter_matches_peft_on_the_students_own_weights(tmp_path, smollm2_f32, smollm2_adapter, smollm2):
    """Same weights in both engines (F32), so any gap is the export's: q/k lora_b rows permuted like the base's."""
    adapter = export_adapter(smollm2_adapter, smollm2_f32, tmp_path / "adapter.gguf")
    tuned_cpp, greedy_cpp = _cpp(smollm2_f32, adapter, smollm2)
    assert np.abs(smollm2["tuned"] - smollm2["base"]).max() > 100 * ABS_TOL_F32, "the adapter really moves log-probs"
    assert np.abs(tuned_cpp - smollm2["tuned"]).max() < ABS_TOL_F32
    assert greedy_cpp == smollm2["greedy"]


def test_an_unpermuted_llama_adapter_fails_the_same_check(tmp_path, smollm2_f32, smollm2_adapter, smollm2):
    """The bug the permutation exists for: llama.cpp loads such an adapter silently, and it is wrong."""
    lora, base = read_peft_lora(smollm2_adapter), read_base_gguf(smollm2_f32)
    alpha, pairs = gguf_lora_pairs(lora, base, permute=False)
    bad = write_lora_gguf(tmp_path / "unpermuted.gguf", base.arch, alpha, pairs)
    check_adapter_loads(smollm2_f32, bad)  # no complaint from llama.cpp
    tuned_cpp, _ = _cpp(smollm2_f32, bad, smollm2, greedy=False)
    miss = np.abs(tuned_cpp - smollm2["tuned"]).max()
    assert miss > 10 * ABS_TOL_F32, f"an unpermuted adapter misses PEFT's log-probs by only {miss:.3f}"


def test_gguf_adapter_on_the_q4_1_base_matches_peft(tmp_path, smollm2_gguf, smollm2_adapter, smollm2):
    """The file users run: the adapter on the Q4_1 base. llama.cpp's Q4_1 matmuls round activations to
    8 bits, so even the base alone differs from transformers' fp32 run of the same weights."""
    adapter = export_adapter(smollm2_adapter, smollm2_gguf, tmp_path / "adapter.gguf")
    base_cpp, _ = _cpp(smollm2_gguf, None, smollm2, greedy=False)
    tuned_cpp, greedy_cpp = _cpp(smollm2_gguf, adapter, smollm2)
    effect_gap = np.abs((tuned_cpp - base_cpp) - (smollm2["tuned"] - smollm2["base"]))
    assert effect_gap.mean() < EFFECT_MEAN_TOL_Q4_1
    assert np.abs(tuned_cpp - smollm2["tuned"]).max() < ABS_TOL_Q4_1
    for ours, theirs, gaps in zip(greedy_cpp, smollm2["greedy"], smollm2["greedy_gaps"]):
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        # identical, or parting only where transformers' top two tokens were a near-tie
        assert first is None or gaps[first] < NEAR_TIE, (first, gaps[first])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, smollm2_adapter, smollm2_gguf):
    """`lite-delta export` on the trained SmolLM2 adapter: adapter, merged F16 + Q4_K_M, Modelfiles, README."""
    out = tmp_path_factory.mktemp("export") / "smollm2-tuned"
    main(["export", "--adapter", str(smollm2_adapter), "--base", str(smollm2_gguf), "--out", str(out)])
    return out


def test_export_writes_adapter_merged_models_modelfile_and_commands(exported, smollm2_gguf):
    import gguf

    from lite_delta.models.refs import model_identity

    result = json.loads((exported / "export.json").read_text())
    assert result["base_check"].startswith("exact")
    base_name = smollm2_gguf.name
    assert result["base"] == base_name and result["base_placed"] in ("hardlink", "copy")
    assert (exported / base_name).read_bytes() == smollm2_gguf.read_bytes()
    if result["base_placed"] == "hardlink":
        assert (exported / base_name).samefile(smollm2_gguf)
    modelfile = (exported / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{base_name}\nADAPTER ./adapter.gguf\nTEMPLATE \"\"\"")
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert (exported / "Modelfile.merged").read_text() == modelfile.replace(
        f"FROM ./{base_name}\nADAPTER ./adapter.gguf\n", "FROM ./merged-Q4_K_M.gguf\n")
    readme = (exported / "README.md").read_text()
    for command in ("ollama create smollm2-tuned -f Modelfile", "ollama run smollm2-tuned",
                    f"llama-cli -m {base_name} --lora adapter.gguf",
                    f"llama-server -m {base_name} --lora adapter.gguf --port 8080",
                    "llama-cli -m merged-Q4_K_M.gguf", f"model_path={base_name!r}"):
        assert command in readme
    # no absolute path, no pkg:// reference: the folder works wherever it is copied
    assert "pkg://" not in readme + modelfile and str(smollm2_gguf.parent) not in readme + modelfile
    assert str(exported) not in readme + modelfile
    assert model_identity(smollm2_gguf)["sha256_head_tail"] in readme and result["base_identity"]["name"] == base_name
    sample = result["sample"]
    assert sample["base"] and sample["tuned"] and sample["merged"] and sample["prompt"] in readme

    adapter = gguf.GGUFReader(str(exported / "adapter.gguf"))
    meta = {k: f.contents() for k, f in adapter.fields.items() if not k.startswith("GGUF.")}
    identity = model_identity(smollm2_gguf)
    assert meta == {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora",
                    "adapter.lora.alpha": 16.0,
                    "general.name": "Smollm2 135M 8k Lc100K Mix1 Ep2 LoRA adapter (lite-delta)",
                    "general.base_model.count": 1, "general.base_model.0.name": "Smollm2 135M 8k Lc100K Mix1 Ep2",
                    "general.base_model.0.organization": "HuggingFaceTB",
                    "lite_delta.base.file": base_name, "lite_delta.base.size": identity["size"],
                    "lite_delta.base.sha256_head_tail": identity["sha256_head_tail"]}
    assert "blk.0.attn_q.weight.lora_a" in {t.name for t in adapter.tensors}

    base = gguf.GGUFReader(str(smollm2_gguf))
    for name in ("merged-f16.gguf", "merged-Q4_K_M.gguf"):
        merged = gguf.GGUFReader(str(exported / name))
        for key, field in base.fields.items():  # tokenizer, chat template, hyperparameters: all the base's
            if not key.startswith("GGUF.") and key != "general.file_type":
                assert merged.fields[key].contents() == field.contents(), key
        assert sorted(t.name for t in merged.tensors) == sorted(t.name for t in base.tensors)  # quantizer reorders
    assert gguf.GGUFReader(str(exported / "merged-Q4_K_M.gguf")).fields["general.file_type"].contents() == 15


def test_the_export_folder_works_where_it_is_copied(tmp_path, exported):
    """Modelfile paths are relative: a copy of the folder elsewhere runs (llama.cpp on the FROM/ADAPTER
    files the Modelfiles name, resolved in the copy) and answers as the original export did."""
    import re

    from lite_delta.models.export import sample_answers

    copy = shutil.copytree(exported, tmp_path / "shared" / "tuned-copy")
    modelfile, merged_modelfile = (copy / "Modelfile").read_text(), (copy / "Modelfile.merged").read_text()
    base = copy / re.search(r"^FROM (.+)$", modelfile, re.M)[1]
    adapter = copy / re.search(r"^ADAPTER (.+)$", modelfile, re.M)[1]
    merged = copy / re.search(r"^FROM (.+)$", merged_modelfile, re.M)[1]
    assert all(p.is_file() and p.resolve().parent == copy.resolve() for p in (base, adapter, merged))
    recorded = json.loads((exported / "export.json").read_text())["sample"]
    assert sample_answers(base, adapter, recorded["prompt"], merged=merged) == recorded


def test_the_merge_copies_untouched_tensors_as_they_are(exported, smollm2_gguf, smollm2_adapter):
    """As llama-export-lora does: the Q8_0 token_embd (and the F32 norms) keep their type and bytes;
    only adapted tensors are re-encoded (F16, or F32 where the base's is F32)."""
    import gguf

    adapted = set(gguf_lora_pairs(read_peft_lora(smollm2_adapter), read_base_gguf(smollm2_gguf))[1])
    base = {t.name: t for t in gguf.GGUFReader(str(smollm2_gguf)).tensors}
    merged = {t.name: t for t in gguf.GGUFReader(str(exported / "merged-f16.gguf")).tensors}
    assert base["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0 and adapted
    for name, t in merged.items():
        if name in adapted:
            assert t.tensor_type == gguf.GGMLQuantizationType.F16, name
        else:
            assert t.tensor_type == base[name].tensor_type, name
            assert t.data.tobytes() == base[name].data.tobytes(), name
        assert list(t.shape) == list(base[name].shape), name


def test_a_file_llama_cpp_refuses_is_not_left_behind(tmp_path, monkeypatch, smollm2_gguf, smollm2_adapter):
    """export_adapter loads what it wrote; when llama.cpp refuses it, the file is deleted."""
    import lite_delta.models.lora_gguf as lora_gguf

    write = lora_gguf.write_lora_gguf
    monkeypatch.setattr(lora_gguf, "write_lora_gguf", lambda path, arch, *a, **k: write(path, "qwen2", *a, **k))
    with pytest.raises(LiteDeltaError, match="refused the LoRA adapter"):
        export_adapter(smollm2_adapter, smollm2_gguf, tmp_path / "adapter.gguf")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_16_bit_adapters_load_and_answer_like_f32(tmp_path, dtype, smollm2_f32, smollm2_adapter, smollm2):
    """F16/BF16 adapters: llama.cpp loads them, the greedy answers are the F32 adapter's (= PEFT's),
    and log-probs stay within ABS_TOL_16BIT of PEFT's."""
    import gguf

    adapter = export_adapter(smollm2_adapter, smollm2_f32, tmp_path / f"adapter-{dtype}.gguf", dtype=dtype)
    reader = gguf.GGUFReader(str(adapter))
    f32 = read_base_gguf(smollm2_f32)
    for t in reader.tensors:
        assert t.tensor_type.name == dtype.upper()
    a = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight.lora_a")
    b = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight.lora_b")
    assert [int(d) for d in a.shape] == [f32.shapes["blk.0.attn_q.weight"][1], 8]  # ggml order: [in, r]
    assert [int(d) for d in b.shape] == [8, f32.shapes["blk.0.attn_q.weight"][0]]  # [r, out]
    tuned_cpp, greedy_cpp = _cpp(smollm2_f32, adapter, smollm2)
    assert np.abs(tuned_cpp - smollm2["tuned"]).max() < ABS_TOL_16BIT[dtype]
    assert greedy_cpp == smollm2["greedy"]


def test_merged_f16_matches_peft(exported, smollm2):
    """The merged model before quantization: dequantized base + B @ A, F16, against transformers + PEFT."""
    tuned_cpp, greedy_cpp = _cpp(exported / "merged-f16.gguf", None, smollm2)
    assert np.abs(tuned_cpp - smollm2["tuned"]).max() < ABS_TOL_F16
    assert greedy_cpp == smollm2["greedy"]


# --- qwen2: no permutation; rsLoRA -------------------------------------------------------------


def random_lora(student, out, **options):
    """A PEFT LoRA (r 4, alpha 8) on every linear layer of `student` with random A and B, saved to `out`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                        **options)
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory, tiny_qwen2_gguf):
    """The qwen2 stand-in as a transformers student, and an rsLoRA adapter with random A and B on it."""
    from lite_delta.models.student import prepare_student

    folder = tmp_path_factory.mktemp("qwen2")
    student = prepare_student(str(tiny_qwen2_gguf), folder / "students")
    return student, random_lora(student, folder / "adapter", use_rslora=True)


def test_qwen2_adapter_is_not_permuted_and_rslora_keeps_its_scale(tmp_path, tiny_qwen2_gguf, qwen2):
    from transformers import AutoTokenizer

    student, peft_dir = qwen2
    adapter = export_adapter(peft_dir, tiny_qwen2_gguf, tmp_path / "adapter.gguf")
    tokenizer = AutoTokenizer.from_pretrained(student)
    reference = {"sequences": [_ids(tokenizer, p, ANSWER) for p in PROMPTS], "prompts": [_ids(tokenizer, PROMPTS[0])]}
    tuned = Transformers(student, peft_dir)
    with tuned.model.disable_adapter():
        base_peft = _measure(tuned, reference["sequences"])
    tuned_peft, greedy_peft = _measure(tuned, reference["sequences"]), tuned.greedy(reference["prompts"][0])
    base = LlamaCpp(tiny_qwen2_gguf)
    base_cpp = _measure(base, reference["sequences"])
    base.close()
    tuned_cpp, greedy_cpp = _cpp(tiny_qwen2_gguf, adapter, reference)
    assert np.abs(tuned_peft - base_peft).max() > 10 * EFFECT_TOL
    assert np.abs((tuned_cpp - base_cpp) - (tuned_peft - base_peft)).max() < EFFECT_TOL
    assert greedy_cpp[0] == greedy_peft
    assert read_peft_lora(peft_dir).scales["model.layers.0.self_attn.q_proj"] == pytest.approx(8 / math.sqrt(4))


# --- architectures from llama.cpp's own HF converter: qwen3 (q/k norms, no permutation), llama 3 ---------


@pytest.fixture(scope="module", params=["qwen3", "llama3"])
def hf_converted(request, tmp_path_factory):
    """A tiny random HF model (real tokenizer), its F32 GGUF by llama.cpp's convert_hf_to_gguf.py, and a
    random LoRA on every linear layer (q/k norms are not linear: never targets)."""

    from tests.hf_models import write_tiny_hf
    from tests.llama_cpp_reference import llama_cpp_source, run_reference

    folder = tmp_path_factory.mktemp(request.param)
    student = write_tiny_hf(request.param, folder / "hf", llama_cpp_source(), dtype="float32")
    base = folder / "base-f32.gguf"
    run_reference("convert_hf_to_gguf.py", str(student), "--outfile", str(base), "--outtype", "f32")
    return request.param, str(student), base, random_lora(student, folder / "adapter")


def test_adapter_on_llama_cpps_own_conversion_matches_peft(tmp_path, hf_converted):
    """Same F32 weights in both engines (llama.cpp's converter made the GGUF): the tuned log-probs and
    greedy tokens agree, and the adapter really moves them."""
    from transformers import AutoTokenizer

    kind, student, base, peft_dir = hf_converted
    assert read_base_gguf(base).arch == {"qwen3": "qwen3", "llama3": "llama"}[kind]
    adapter = export_adapter(peft_dir, base, tmp_path / "adapter.gguf")
    tokenizer = AutoTokenizer.from_pretrained(student)
    reference = {"sequences": [_ids(tokenizer, p, ANSWER) for p in PROMPTS], "prompts": [_ids(tokenizer, PROMPTS[0])]}
    tuned = Transformers(student, peft_dir)
    with tuned.model.disable_adapter():
        base_peft = _measure(tuned, reference["sequences"])
    tuned_peft, greedy_peft = _measure(tuned, reference["sequences"]), tuned.greedy(reference["prompts"][0])
    tuned_cpp, greedy_cpp = _cpp(base, adapter, reference)
    assert np.abs(tuned_peft - base_peft).max() > 10 * ABS_TOL_F32
    assert np.abs(tuned_cpp - tuned_peft).max() < ABS_TOL_F32
    # random weights over a 151k vocabulary leave near-ties: the runs may part only where PEFT's top two
    # logits are closer than the two engines' measured disagreement allows
    gaps = tuned.top2_gaps(reference["prompts"][0], greedy_peft)
    first = next((i for i, (a, b) in enumerate(zip(greedy_cpp[0], greedy_peft)) if a != b), None)
    assert first is None or gaps[first] < 2 * ABS_TOL_F32, (first, gaps[first])


# --- pure logic --------------------------------------------------------------------------------


def test_permute_qk_rows_interleaves_the_two_rotary_halves_of_each_head():
    n_head, head_dim = 2, 6
    rows = np.arange(n_head * head_dim)[:, None].astype(np.float32)
    permuted = permute_qk_rows(rows, n_head)[:, 0].astype(int).tolist()
    assert permuted == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]


def test_per_module_scales_are_folded_into_lora_b():
    """alpha/rank patterns (and rsLoRA) differ per module; llama.cpp has one alpha, so B carries the rest."""
    rng = np.random.default_rng(0)
    pairs = {"model.layers.0.self_attn.q_proj": (rng.standard_normal((4, 8)), rng.standard_normal((8, 4))),
             "model.layers.0.mlp.up_proj": (rng.standard_normal((2, 8)), rng.standard_normal((16, 2)))}
    scales = {"model.layers.0.self_attn.q_proj": 2.0, "model.layers.0.mlp.up_proj": 8.0}
    lora = PeftLora(folder=None, config={}, pairs=pairs, scales=scales)
    base = BaseGGUF(path=None, arch="qwen2", n_blocks=1, n_head=2, n_head_kv=2,
                    shapes={"blk.0.attn_q.weight": (8, 8), "blk.0.ffn_up.weight": (16, 8)})
    alpha, out = gguf_lora_pairs(lora, base)
    for module, name in (("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight"),
                         ("model.layers.0.mlp.up_proj", "blk.0.ffn_up.weight")):
        a, b = out[name]
        expected = scales[module] * pairs[module][1] @ pairs[module][0]
        np.testing.assert_allclose(alpha / a.shape[0] * b @ a, expected, rtol=1e-5, atol=1e-5)


# --- bad inputs: exit 2, naming the problem ----------------------------------------------------


def _exit_2(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["export", *args])
    assert exc.value.code == 2
    return capsys.readouterr().err.replace("\n", "")


def _peft_variant(student, folder, **config):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM", **config)).save_pretrained(folder)
    return folder


def test_bad_inputs_exit_2_naming_the_problem(tmp_path, capsys, smollm2_gguf, smollm2_adapter, tiny_gguf,
                                              tiny_qwen2_gguf, qwen2):
    student, qwen2_adapter = qwen2
    out = str(tmp_path / "out")
    (tmp_path / "empty").mkdir()
    assert "not a PEFT adapter folder" in _exit_2(capsys, "--adapter", str(tmp_path / "empty"), "--base",
                                                  str(smollm2_gguf), "--out", out)
    dora = _peft_variant(student, tmp_path / "dora", use_dora=True)
    assert "DoRA" in _exit_2(capsys, "--adapter", str(dora), "--base", str(tiny_qwen2_gguf), "--out", out)
    saved = _peft_variant(student, tmp_path / "saved", modules_to_save=["lm_head"])
    assert "modules_to_save" in _exit_2(capsys, "--adapter", str(saved), "--base", str(tiny_qwen2_gguf), "--out", out)
    err = _exit_2(capsys, "--adapter", str(qwen2_adapter), "--base", str(smollm2_gguf), "--out", out)
    assert "trained on a qwen2 model" in err and "llama model" in err
    err = _exit_2(capsys, "--adapter", str(smollm2_adapter), "--base", str(tiny_gguf), "--out", out)
    assert "trained on another base model" in err and "blk.0." in err
    assert "unknown quant" in _exit_2(capsys, "--adapter", str(smollm2_adapter), "--base", str(smollm2_gguf),
                                      "--out", out, "--quant", "Q9_X")
    assert not (tmp_path / "out").exists(), "nothing is written before the inputs are checked"


def test_a_base_with_the_same_shapes_but_other_weights_is_refused(tmp_path, capsys, smollm2_gguf, qwen2):
    from lite_delta.models.random_gguf import write_random_gguf

    other = write_random_gguf(tmp_path / "other-qwen2.gguf", tokenizer_from=smollm2_gguf, arch="qwen2", seed=7)
    err = _exit_2(capsys, "--adapter", str(qwen2[1]), "--base", str(other), "--out", str(tmp_path / "out"))
    assert "is not the model the adapter was trained on" in err


def test_llama_cpp_refusing_an_adapter_is_a_clear_error(tmp_path, smollm2_gguf, smollm2_adapter):
    lora, base = read_peft_lora(smollm2_adapter), read_base_gguf(smollm2_gguf)
    alpha, pairs = gguf_lora_pairs(lora, base)
    wrong_arch = write_lora_gguf(tmp_path / "qwen2-labelled.gguf", "qwen2", alpha, pairs)
    with pytest.raises(LiteDeltaError, match="refused the LoRA adapter"):
        check_adapter_loads(smollm2_gguf, wrong_arch)


def _broken_copy(adapter, folder, *, config=None, tensors=None, truncate=False):
    """A copy of a real PEFT adapter with its config fields replaced, its tensors edited, or its file cut short."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(adapter, folder)
    if config is not None:
        data = {**json.loads((folder / "adapter_config.json").read_text()), **config}
        data = {k: v for k, v in data.items() if v != "<drop>"}
        (folder / "adapter_config.json").write_text(json.dumps(data))
    weights = folder / "adapter_model.safetensors"
    if tensors is not None:
        save_file(tensors(load_file(weights)), weights)
    if truncate:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def _rank_zero(t):
    return {k: (v[:0] if "lora_A" in k else v[:, :0]) for k, v in t.items()}


def _nan_b(t):
    return {k: (np.full_like(v, np.nan) if "lora_B" in k else v) for k, v in t.items()}


@pytest.mark.parametrize("broken, says", [
    (dict(config={"lora_alpha": "<drop>"}), "`lora_alpha` should be a positive number, got None"),
    (dict(config={"lora_alpha": "16"}), "`lora_alpha` should be a positive number, got '16'"),
    (dict(config={"lora_alpha": 0}), "`lora_alpha` should be a positive number"),
    (dict(config={"alpha_pattern": "q_proj"}), "`alpha_pattern` should be an object"),
    (dict(config={"use_rslora": "yes"}), "`use_rslora` should be true or false"),
    (dict(config={"modules_to_save": {"a": 1}}), "`modules_to_save` should be a list"),
    (dict(config={"lora_alpha": 1e300}), "overflows float32"),
    (dict(tensors=_rank_zero), "has rank 0"),
    (dict(tensors=_nan_b), "NaN or infinite weights"),
    (dict(truncate=True), "cannot be read as safetensors"),
])
def test_broken_adapters_exit_2_and_nothing_is_exported(broken, says, tmp_path, capsys, tiny_qwen2_gguf, qwen2):
    _, qwen2_adapter = qwen2
    adapter = _broken_copy(qwen2_adapter, tmp_path / "adapter", **broken)
    err = _exit_2(capsys, "--adapter", str(adapter), "--base", str(tiny_qwen2_gguf), "--out", str(tmp_path / "out"))
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_out_equal_to_the_adapter_folder_is_refused(tmp_path, capsys, tiny_qwen2_gguf, qwen2):
    _, qwen2_adapter = qwen2
    adapter = _broken_copy(qwen2_adapter, tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in adapter.iterdir()}
    err = _exit_2(capsys, "--adapter", str(adapter), "--base", str(tiny_qwen2_gguf), "--out", str(adapter / "."))
    assert "is the adapter folder" in err
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == before
