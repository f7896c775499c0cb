"""llama.cpp's own Python tools, the reference our converters are checked against.

They come from the llama-cpp-python sdist lite-delta pins (its vendored llama.cpp): fetched once from
the package index with `pip download` into the test cache (``$LITE_DELTA_TEST_CACHE``, else
``~/.cache/lite-delta-tests``), and only the parts the tests read are unpacked: the HF and LoRA
converters, the `conversion` package, the vendored `gguf-py`, two vocabulary GGUFs (Qwen2's and
Llama 3's) with llama.cpp's tokenizer test cases, and the chat templates.

Without the index the tests skip with the reason; in CI (``CI=true``) they fail instead, as the
benchmark-data tests do: there the reference must run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

VERSION = "0.3.36"  # pyproject.toml pins llama-cpp-python to this
TOP = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/",
           "models/ggml-vocab-qwen2.gguf", "models/ggml-vocab-llama-bpe.gguf", "models/templates/")


def cache_root() -> Path:
    return Path(os.environ.get("LITE_DELTA_TEST_CACHE") or Path.home() / ".cache" / "lite-delta-tests")


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"llama.cpp's reference converters are needed in CI: {reason}")
    pytest.skip(f"llama.cpp's reference converters unavailable: {reason}")


def llama_cpp_source() -> Path:
    """The unpacked parts of the vendored llama.cpp (a folder holding convert_hf_to_gguf.py)."""
    root = cache_root() / f"llama.cpp-{VERSION}"
    if (root / ".complete").is_file():
        return root
    download = cache_root() / "download"
    download.mkdir(parents=True, exist_ok=True)
    sdist = download / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
             f"llama-cpp-python=={VERSION}", "-d", str(download)],
            capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not sdist.is_file():
            _unavailable(f"pip download llama-cpp-python=={VERSION} failed: {proc.stderr.strip()[-300:]}")
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    with tarfile.open(sdist) as tar:
        picked = [m for m in tar.getmembers()
                  if m.name.startswith(TOP) and m.name[len(TOP):].startswith(MEMBERS) and (m.isfile() or m.isdir())]
        for m in picked:
            m.name = m.name[len(TOP):]
        tar.extractall(tmp, members=picked, filter="data")
    (tmp / ".complete").write_text(VERSION + "\n")
    if root.exists():
        import shutil

        shutil.rmtree(root)
    tmp.rename(root)
    return root


def run_reference(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one of llama.cpp's converter scripts (with its own vendored gguf-py) and check it succeeded."""
    src = llama_cpp_source()
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    proc = subprocess.run([sys.executable, str(src / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=src)
    if proc.returncode != 0:
        raise AssertionError(f"llama.cpp's {script} failed:\n{proc.stderr[-3000:]}")
    return proc
