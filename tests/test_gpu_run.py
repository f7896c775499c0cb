"""The prepared GPU run (benchmarks/gpu/): its CPU dry run end to end, and the carry trimming."""

from __future__ import annotations

import hashlib
import base64
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "benchmarks" / "gpu"


def _trim():
    spec = importlib.util.spec_from_file_location("gpu_trim", GPU / "trim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trimmed_wheel_keeps_a_record_that_matches_its_files(tmp_path):
    src = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr("pkg/libbig_cuda118.so", b"\0" * 1000)
        z.writestr("pkg/libbig_cuda130.so", b"\1" * 10)
        z.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\nVersion: 1.0\n")
        z.writestr("pkg-1.0.dist-info/RECORD", "stale\n")
    dst = _trim().trim_wheel(src, tmp_path / "out", ["pkg/libbig_cuda1[12]*"])
    with zipfile.ZipFile(dst) as z:
        names = set(z.namelist())
        record = z.read("pkg-1.0.dist-info/RECORD").decode().splitlines()
        assert names == {"pkg/__init__.py", "pkg/libbig_cuda130.so", "pkg-1.0.dist-info/METADATA",
                         "pkg-1.0.dist-info/RECORD"}
        for line in record[:-1]:
            name, digest, size = line.split(",")
            data = z.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}" and int(size) == len(data)
        assert record[-1] == "pkg-1.0.dist-info/RECORD,,"


def test_trimmed_sdist_drops_what_the_build_never_reads(tmp_path):
    top = tmp_path / "src" / "llama_cpp_python-0.3.36"
    keep = ["CMakeLists.txt", "vendor/llama.cpp/ggml/src/ggml-cuda/mmq.cu", "vendor/llama.cpp/src/llama.cpp",
            "vendor/llama.cpp/tools/mtmd/mtmd.cpp", "vendor/llama.cpp/common/common.cpp"]
    drop = [".git/modules/pack", "vendor/llama.cpp/models/ggml-vocab-llama.gguf", "vendor/llama.cpp/docs/a.md",
            "vendor/llama.cpp/tests/test-a.cpp", "vendor/llama.cpp/ggml/src/ggml-vulkan/v.cpp",
            "vendor/llama.cpp/tools/server/server.cpp", "vendor/llama.cpp/convert_hf_to_gguf.py"]
    for rel in keep + drop:
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text("x")
    src = tmp_path / "in.tar.gz"
    with tarfile.open(src, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    dst = _trim().trim_sdist(src, tmp_path / "out.tar.gz")
    with tarfile.open(dst) as tar:
        files = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    assert files == set(keep)


@pytest.mark.slow
def test_run_sh_dry_run_writes_every_result_file(tmp_path):
    """`LITE_DELTA_GPU_DRY_RUN=1 bash benchmarks/gpu/run.sh`: the GPU run's own code at tiny shapes on the CPU."""
    out = tmp_path / "out"
    env = {**os.environ, "LITE_DELTA_GPU_DRY_RUN": "1", "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(GPU / "run.sh"), "measure"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (out / "errors.jsonl").exists(), (out / "errors.jsonl").read_text()
    returned = [p for p in out.iterdir() if p.is_file()]
    assert len(returned) <= 8, "a device call brings back at most 8 files"

    env_record = json.loads((out / "env.json").read_text())
    assert env_record["dry_run"] is True and env_record["torch_cuda_available"] is False
    assert env_record["packages"]["torch"] and "llama_cpp_gpu_offload" in env_record

    rows = [json.loads(line) for line in (out / "generate.jsonl").read_text().splitlines()]
    assert [(r["stand_in"], r["slots"]) for r in rows] == [("tiny-a", 1), ("tiny-a", 4), ("tiny-b", 1), ("tiny-b", 4)]
    for r in rows:
        assert r["dry_run"] is True and r["batched_tok_s"] > 0 and r["sequential_tok_s"] > 0
        assert r["completion_tokens"] == max(r["slots"], 4) * 8 and r["quant"] == "Q4_K_M"
    assert [r["slots"] for r in rows if r.get("device_over_host")] == [4, 4], "device sampling beside the host's"

    expected = {"peft"} | ({"unsloth"} if importlib.util.find_spec("unsloth") else set())
    for name, tokens in (("train", 128), ("train-fp16", 128)):
        train = json.loads((out / f"{name}.json").read_text())
        assert train["dry_run"] is True and train["student_shape"] == "tiny" and train["returncode"] == 0
        assert {r["backend"] for r in train["runs"] if "tokens_per_s" in r} == expected
        for r in train["runs"]:
            assert r["tokens_per_step"] == tokens and r["planner"]["total_gib"] > 0
    assert "--quantization" in json.loads((out / "train-fp16.json").read_text())["command"]

    suite = json.loads((out / "suite.json").read_text())
    assert suite["returncode"] == 0 and suite["engine"]["engine"] == "transformers", suite["output_tail"]
    assert suite["tasks"]["gsm8k"]["n"] == 2 and suite["items_per_s"] > 0

    e2e = json.loads((out / "e2e.json").read_text())
    assert e2e["returncode"] == 0 and not e2e["timed_out"], e2e["output_tail"]
    assert all(status == "done" for status in e2e["stages"].values()) and "train" in e2e["stages"]
    assert e2e["train"]["backend"] == "peft" and e2e["train"]["device"] == "CPU"
