"""A rejected teacher derived from the chosen one: SmolLM2 Q4_1 requantized to Q2_K by llama.cpp, made once."""

from __future__ import annotations

import json

import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.models.derive import check_derive, derive_gguf
from lite_delta.models.refs import DEMO_MODEL, model_identity


def test_the_derived_file_loads_records_its_provenance_and_is_reused(derived_cache, smollm2_gguf):
    from lite_delta.inference.engine import GGUFModel

    path, first = derive_gguf(DEMO_MODEL, "q2_k", cache_dir=derived_cache / "derived")
    assert first["reused"] is True  # the session fixture made it; the same source and quant never requantize
    assert first["source_identity"] == model_identity(smollm2_gguf)
    assert first["quant"] == "Q2_K" and first["source_file_type"] == "Q4_1" and first["requantized"] is True
    assert "lossy" in first["note"] and first["identity"] == model_identity(path)
    assert path.stat().st_size < smollm2_gguf.stat().st_size  # really requantized, not copied
    on_disk = json.loads(path.with_name(path.name + ".json").read_text())
    assert on_disk["source_identity"] == first["source_identity"] and on_disk["quant"] == "Q2_K"
    mtime = path.stat().st_mtime_ns
    _, again = derive_gguf(DEMO_MODEL, "Q2_K", cache_dir=derived_cache / "derived")
    assert again["reused"] is True and path.stat().st_mtime_ns == mtime
    model = GGUFModel(path)
    try:
        assert model.chat_template and model.tokenize_prompt("Hello")
    finally:
        model.close()


@pytest.mark.slow  # a second quantization (~20 s)
def test_a_changed_derived_file_is_made_again(tmp_path, derived_cache):
    folder = tmp_path / "derived"
    source = next((derived_cache / "derived").glob("*.gguf"))
    folder.mkdir()
    (folder / source.name).write_bytes(b"GGUF" + b"\0" * 60)  # a stale or damaged file under the same name
    (folder / (source.name + ".json")).write_text((source.parent / (source.name + ".json")).read_text())
    path, made = derive_gguf(DEMO_MODEL, "Q2_K", cache_dir=folder)
    assert made["reused"] is False and path.stat().st_size == source.stat().st_size


def test_an_unknown_quant_type_names_the_field():
    with pytest.raises(LiteDeltaError, match=r"--derive: unknown llama.cpp quant type 'Q9_X'.*Q2_K"):
        check_derive("Q9_X", "--derive")


def test_generate_records_the_derived_teacher_in_its_manifest(tmp_path, derived_cache, monkeypatch, write_prompts):
    from lite_delta.config import GenerateConfig
    from lite_delta.generate import generate

    monkeypatch.setenv("LITE_DELTA_CACHE", str(derived_cache))
    prompts = write_prompts(tmp_path / "p.jsonl", ["Name a colour."])
    cfg = GenerateConfig(model=DEMO_MODEL, derive="Q2_K", prompts={"source": str(prompts)}, out=tmp_path / "out",
                         generation={"max_tokens": 4, "parallel": 1})
    info = json.loads((generate(cfg, progress=False) / "generation.json").read_text())
    derived = info["derived"]
    assert derived["quant"] == "Q2_K" and derived["reused"] is True and derived["derived_from"] == DEMO_MODEL
    assert info["model_identity"] == derived["identity"] != derived["source_identity"]
    record = json.loads((tmp_path / "out" / "completions.jsonl").read_text().splitlines()[0])
    assert record["model"] == f"{DEMO_MODEL} derived Q2_K"
