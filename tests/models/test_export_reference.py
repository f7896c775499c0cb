"""The GGUF LoRA adapters `lite-delta export` writes, against llama.cpp's own convert_lora_to_gguf.py on
the same PEFT adapter: every tensor (name, type, shape, bytes) and every adapter key identical, in
F32, F16 and BF16. (Only the naming keys differ: the converter names the adapter folder in general.*,
we name the base GGUF in general.base_model.* and lite_delta.base.*.)"""

from __future__ import annotations

import pytest

from lite_delta.models.lora_gguf import export_adapter
from tests.llama_cpp_reference import run_reference


def _contents(path) -> tuple[dict, dict]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    keys = {k: f.contents() for k, f in reader.fields.items()
            if k.startswith("adapter.") or k in ("general.architecture", "general.type")}
    tensors = {t.name: (t.tensor_type.name, [int(d) for d in t.shape], t.data.tobytes()) for t in reader.tensors}
    return keys, tensors


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_adapter_gguf_is_llama_cpps_own_conversion(tmp_path, dtype, smollm2_gguf, smollm2_student, smollm2_adapter):
    theirs = tmp_path / f"reference-{dtype}.gguf"
    run_reference("convert_lora_to_gguf.py", "--base", str(smollm2_student), "--outtype", dtype,
                  "--outfile", str(theirs), str(smollm2_adapter))
    ours = export_adapter(smollm2_adapter, smollm2_gguf, tmp_path / f"ours-{dtype}.gguf", dtype=dtype)
    their_keys, their_tensors = _contents(theirs)
    our_keys, our_tensors = _contents(ours)
    assert our_keys == their_keys
    assert sorted(our_tensors) == sorted(their_tensors)
    assert len(our_tensors) == 2 * 7 * 30  # q k v o gate up down in 30 blocks, A and B
    for name, (qtype, shape, data) in their_tensors.items():
        assert our_tensors[name][:2] == (qtype, shape), name
        assert our_tensors[name][2] == data, f"{name}: bytes differ from convert_lora_to_gguf.py's"
