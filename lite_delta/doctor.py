"""`lite-delta doctor`: is this machine ready, and if not, what is the fix? One line per check.

Facts are gathered first (imports, versions, devices, disk), then judged by pure functions, so the
judgement is testable without the hardware it talks about.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lite_delta.files import writable_dir
from lite_delta.precision import resolve_precision

Status = Literal["ok", "warning", "problem"]

# Pins that must match for the training stack to resolve with Unsloth (see pyproject.toml).
PINS = {
    "llama-cpp-python": "0.3.36",
    "transformers": "5.17.0",
    "trl": "1.15.0",
    "datasets": "4.8.5",
    "peft": "0.21.2",
    "accelerate": "1.15.0",
}
UNSLOTH_PIN = "2026.10.9"
CUDA_REBUILD = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --no-cache-dir --force-reinstall llama-cpp-python==0.3.36'
GB = 1024**3


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class Facts:
    python: tuple[int, int, int]
    torch_version: str | None = None
    torch_cuda: str | None = None  # CUDA version torch was built for; None for a CPU build
    gpu_name: str | None = None
    gpu_capability: tuple[int, int] | None = None
    gpu_free_gb: float | None = None
    llama_version: str | None = None
    llama_gpu_offload: bool = False
    llama_amx: bool = False
    llama_extra_buffers: bool = True
    bitsandbytes: str | None = None
    unsloth: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    disk_free_gb: dict[str, float] = field(default_factory=dict)
    hub_offline: bool = False
    hub_reachable: bool | None = None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def gather(runs_dir: Path = Path("runs")) -> Facts:
    facts = Facts(python=tuple(sys.version_info[:3]))
    if importlib.util.find_spec("torch") is not None:
        import torch

        facts.torch_version = torch.__version__
        facts.torch_cuda = torch.version.cuda
        if torch.cuda.is_available():
            facts.gpu_name = torch.cuda.get_device_name(0)
            facts.gpu_capability = tuple(torch.cuda.get_device_capability(0))
            facts.gpu_free_gb = torch.cuda.mem_get_info(0)[0] / GB
    if importlib.util.find_spec("llama_cpp") is not None:
        import llama_cpp

        facts.llama_version = llama_cpp.__version__
        facts.llama_gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        from lite_delta.inference.engine import cpu_extra_buffers

        facts.llama_amx = "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode("utf-8", "replace")
        facts.llama_extra_buffers = cpu_extra_buffers()
    facts.bitsandbytes = _version("bitsandbytes")
    facts.unsloth = _version("unsloth")  # not imported: importing unsloth patches trl and transformers
    facts.versions = {name: _version(name) for name in PINS}
    from huggingface_hub import constants

    for label, folder in (("runs", runs_dir), ("Hub cache", Path(constants.HF_HUB_CACHE))):
        facts.disk_free_gb[label] = shutil.disk_usage(_existing_parent(folder)).free / GB
    facts.hub_offline = bool(constants.HF_HUB_OFFLINE)
    facts.hub_reachable = None if facts.hub_offline else hub_reachable()
    return facts


def judge(f: Facts) -> list[Check]:
    checks = [Check("python", "ok" if f.python >= (3, 10) else "problem", ".".join(map(str, f.python)),
                    "" if f.python >= (3, 10) else "use Python 3.10 or newer")]
    gpu = f.gpu_name is not None
    if f.torch_version is None:
        checks.append(Check("torch", "problem", "not installed", "pip install torch==2.13.0 (CPU) or a CUDA build"))
    else:
        build = f"CUDA {f.torch_cuda} build" if f.torch_cuda else "CPU build"
        checks.append(Check("torch", "ok", f"{f.torch_version}, {build}"))
    if gpu:
        cap = ".".join(map(str, f.gpu_capability or ()))
        checks.append(Check("gpu", "ok", f"{f.gpu_name}, compute {cap}, {f.gpu_free_gb:.1f} GB free"))
        checks.append(Check("precision", "ok", precision_for(f.gpu_capability)))
    elif f.torch_cuda:
        checks.append(Check("gpu", "warning", "torch has CUDA but sees no GPU",
                            "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"))
    else:
        checks.append(Check("gpu", "warning", "no CUDA GPU: generation, pairing and the demo run on the CPU; "
                            "4-bit QLoRA training needs a CUDA GPU"))
    checks.append(_llama_check(f, gpu))
    if gpu:
        ok = f.bitsandbytes is not None
        checks.append(Check("bitsandbytes", "ok" if ok else "problem", f.bitsandbytes or "not installed",
                            "" if ok else "pip install -e '.[gpu]'"))
        checks.append(_unsloth_check(f))
    else:
        checks.append(Check("bitsandbytes", "ok", "not needed on the CPU (training runs in full precision)"))
        checks.append(Check("unsloth", "ok", f"{f.unsloth or 'not installed'}; not used on the CPU"))
    wrong = {name: have for name, have in f.versions.items() if have != PINS[name]}
    checks.append(Check("pins", "warning" if wrong else "ok",
                        ", ".join(f"{n} {v or 'missing'} (want {PINS[n]})" for n, v in wrong.items()) or "all match",
                        "pip install -e . (reinstalls the pinned set)" if wrong else ""))
    for label, free in f.disk_free_gb.items():
        status: Status = "problem" if free < 1 else "warning" if free < 10 else "ok"
        checks.append(Check(f"disk ({label})", status, f"{free:.1f} GB free",
                            "" if status == "ok" else "free space: 8B runs need ~20 GB (models, caches, adapters)"))
    if f.hub_offline:
        checks.append(Check("hub", "ok", "offline mode (HF_HUB_OFFLINE=1): cached models and datasets, local files"))
    elif f.hub_reachable:
        checks.append(Check("hub", "ok", "huggingface.co reachable"))
    else:
        checks.append(Check("hub", "warning", "huggingface.co unreachable: only cached models/datasets and local "
                            "files work", "connect once to download, or set HF_HUB_OFFLINE=1 to skip Hub retries"))
    return checks


def precision_for(capability: tuple[int, int] | None) -> str:
    """bf16 from Ampere (compute 8.0) on; fp16 before (a T4 is 7.5); fp32 on the CPU."""
    choice = resolve_precision("auto", capability)
    return {"fp32": "fp32 (CPU)", "fp16": "fp16 (no bf16 on this card)"}.get(choice, choice)


def _llama_check(f: Facts, gpu: bool) -> Check:
    if f.llama_version is None:
        return Check("llama-cpp-python", "problem", "not installed", "pip install -e . (builds it from source)")
    if f.llama_version != PINS["llama-cpp-python"]:
        detail = f"{f.llama_version} (want {PINS['llama-cpp-python']})"
    else:
        detail = f.llama_version
    if gpu and not f.llama_gpu_offload:
        return Check("llama-cpp-python", "problem", f"{detail}, built without CUDA: generation would run on the CPU",
                     CUDA_REBUILD)
    build = "CUDA build" if f.llama_gpu_offload else "CPU build"
    state = "on" if f.llama_extra_buffers else "off"
    note = f"; CPU extra buffers (repacked weights{', AMX' if f.llama_amx else ''}) {state}"
    if f.llama_amx and not f.llama_extra_buffers:
        note += " because this CPU runs the AMX kernels that crash on some VMs (LITE_DELTA_CPU_EXTRA_BUFFERS=1 turns them on)"
    return Check("llama-cpp-python", "ok", f"{detail}, {build}{note}")


def _unsloth_check(f: Facts) -> Check:
    if f.unsloth is None:
        return Check("unsloth", "warning", "not installed: training falls back to the slower peft backend",
                     "pip install -e '.[gpu]'")
    if f.unsloth != UNSLOTH_PIN:
        return Check("unsloth", "warning", f"{f.unsloth} (want {UNSLOTH_PIN}; it caps trl and transformers)",
                     f"pip install unsloth=={UNSLOTH_PIN} unsloth-zoo=={UNSLOTH_PIN}")
    return Check("unsloth", "ok", f.unsloth)


def doctor(runs_dir: Path = Path("runs")) -> tuple[list[Check], int]:
    """All checks and the exit code: 1 when something blocks a run, else 0."""
    writable_dir(runs_dir, "--runs-dir", create=False)  # a doctor run creates nothing
    checks = judge(gather(runs_dir))
    return checks, int(any(c.status == "problem" for c in checks))


def print_checks(checks: list[Check], console) -> None:
    colour = {"ok": "green", "warning": "yellow", "problem": "red"}
    for c in checks:
        console.print(f"[{colour[c.status]}]{c.status:<8}[/] {c.name:<18} {c.detail}", highlight=False, soft_wrap=True)
        if c.fix:
            console.print(f"{'':27}fix: {c.fix}", highlight=False, soft_wrap=True)
