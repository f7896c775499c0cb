"""Trim what the GPU run carries: wheels without the parts the device never loads, and the
llama-cpp-python sdist without llama.cpp's tests, docs, example data, vocab models and other backends.

    python benchmarks/gpu/trim.py wheel IN.whl OUT_DIR --drop 'bitsandbytes/libbitsandbytes_cuda1[12]*'
    python benchmarks/gpu/trim.py sdist IN.tar.gz OUT.tar.gz

A trimmed wheel keeps its name and a RECORD that lists only the files it still holds (pip installs it
as usual); the sdist keeps its top folder name, so `pip install OUT.tar.gz` builds it as before.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Paths under the sdist's vendor/llama.cpp that the Python package's build never reads
# (LLAMA_BUILD_TESTS/EXAMPLES/TOOLS are off when llama.cpp is a subproject; tools/mtmd is kept for LLAVA_BUILD).
LLAMA_CPP_DROP = [
    "docs", "models", "tests", "examples", "benches", "pocs", "media", "scripts", "skills", "gguf-py",
    "conversion", "convert_*.py", "app", "grammars", "requirements", "ci", "licenses", ".github", ".devops",
    "tools/[!m]*", "tools/main", "tools/mtmd/test-*",
    *(f"ggml/src/ggml-{b}" for b in ("metal", "vulkan", "sycl", "opencl", "cann", "hexagon", "et", "webgpu",
                                     "openvino", "virtgpu", "musa", "hip", "zdnn", "kompute", "zendnn")),
]
SDIST_DROP = [".git", ".github", "docs", "examples", "tests", "docker"]  # .git: the submodule's packed history (39 MB)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def trim_wheel(src: Path, out_dir: Path, drop: list[str]) -> Path:
    """Copy a wheel into out_dir without the members matching `drop` (fnmatch), RECORD rewritten."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / src.name
    tmp = dst.with_suffix(".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for info in zin.infolist():
            if info.filename == record_name or any(fnmatch.fnmatch(info.filename, p) for p in drop):
                continue
            data = zin.read(info)
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            if not info.is_dir():
                lines.append(_record_line(info.filename, data))
        lines.append(f"{record_name},,")
        zout.writestr(record_name, "\n".join(lines) + "\n")
    tmp.replace(dst)
    return dst


def _remove(root: Path, patterns: list[str]) -> None:
    for pattern in patterns:
        for path in sorted(root.glob(pattern), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


def trim_sdist(src: Path, dst: Path) -> Path:
    """Repack the llama-cpp-python sdist without what its CMake build never reads."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(src) as tar:
            tar.extractall(tmp, filter="data")
        (top,) = Path(tmp).iterdir()
        _remove(top, SDIST_DROP)
        _remove(top / "vendor" / "llama.cpp", LLAMA_CPP_DROP)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(dst, "w:gz", compresslevel=9) as tar:
            tar.add(top, arcname=top.name)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("wheel")
    w.add_argument("src", type=Path)
    w.add_argument("out_dir", type=Path)
    w.add_argument("--drop", action="append", default=[], help="fnmatch pattern of members to leave out")
    s = sub.add_parser("sdist")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    args = parser.parse_args()
    print(trim_wheel(args.src, args.out_dir, args.drop) if args.what == "wheel" else trim_sdist(args.src, args.dst))


if __name__ == "__main__":
    main()
