"""`lite-delta doctor`: is this machine ready, and if not, what is the fix? One line per check.

Facts are gathered first (imports, versions, devices, disk), then judged by pure functions, so the
judgement is testable without the hardware it talks about.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
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

# Which NVIDIA driver runs which CUDA (Linux x86_64). Sources: NVIDIA's CUDA Compatibility guide, "Minor Version
# Compatibility", Table 1 (a CUDA 13.x build needs driver >= 580, 12.x >= 525, 11.x >= 450), and the CUDA Toolkit
# Release Notes, "CUDA Toolkit and Corresponding Driver Versions" (the GA driver of each toolkit, which has all of
# its features; between the two, minor-version compatibility runs it without PTX JIT).
CUDA_MAJOR_MIN_DRIVER = {13: 580, 12: 525, 11: 450}
CUDA_TOOLKIT_DRIVER = {(13, 0): 580, (12, 9): 575, (12, 8): 570, (12, 6): 560, (12, 5): 555, (12, 4): 550,
                       (12, 3): 545, (12, 2): 535, (12, 1): 530, (12, 0): 525, (11, 8): 520}
# Where torch builds for other CUDA versions live (cu126, cu128, cu130); torch >= 2.11 from PyPI is cu130.
TORCH_INDEX = "https://download.pytorch.org/whl"


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
    driver_version: str | None = None  # NVIDIA driver, read without torch (nvidia-smi or /proc); None: none found
    driver_cuda: str | None = None  # the newest CUDA the driver says it runs (nvidia-smi's header), if it says
    cuda_visible_devices: str | None = None  # the variable as set; None when unset
    torch_cuda_warning: str | None = None  # what torch said when it could not initialise CUDA


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


def nvidia_driver() -> tuple[str | None, str | None]:
    """The NVIDIA driver's version and the newest CUDA it runs, without torch: (None, None) when there is none."""
    version = cuda = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            first = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
            if re.fullmatch(r"\d+\.\d+(\.\d+)?", first):
                version = first
                header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
                found = re.search(r"CUDA Version:\s*(\d+\.\d+)", header)
                cuda = found.group(1) if found else None
        except (OSError, subprocess.SubprocessError):
            pass
    if version is None:  # no nvidia-smi (some containers): the kernel module says its version too
        try:
            version = proc_driver_version(Path("/proc/driver/nvidia/version").read_text())
        except OSError:
            pass
    return version, cuda


def proc_driver_version(text: str) -> str | None:
    """'NVRM version: NVIDIA UNIX [Open ]Kernel Module [for x86_64]  580.65.06  ...' -> '580.65.06'."""
    found = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)
    return found.group(1) if found else None


def gather(runs_dir: Path = Path("runs")) -> Facts:
    facts = Facts(python=tuple(sys.version_info[:3]))
    facts.driver_version, facts.driver_cuda = nvidia_driver()
    facts.cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if importlib.util.find_spec("torch") is not None:
        import torch

        facts.torch_version = torch.__version__
        facts.torch_cuda = torch.version.cuda
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            available = torch.cuda.is_available()
        if not available and said:
            facts.torch_cuda_warning = " ".join(str(said[0].message).split())
        if available:
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
    checks.append(_driver_check(f))
    if gpu:
        cap = ".".join(map(str, f.gpu_capability or ()))
        checks.append(Check("gpu", "ok", f"{f.gpu_name}, compute {cap}, {f.gpu_free_gb:.1f} GB free"))
        checks.append(Check("precision", "ok", precision_for(f.gpu_capability)))
    else:
        checks.append(_no_gpu_check(f))
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


def _cuda(version: str | None) -> tuple[int, int] | None:
    found = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


def driver_runs(driver: str, driver_cuda: str | None = None) -> tuple[int, int] | None:
    """The newest CUDA this driver runs in full: what nvidia-smi says, else NVIDIA's table (None: older than 450)."""
    if _cuda(driver_cuda):
        return _cuda(driver_cuda)
    major = int(driver.split(".")[0])
    fits = [cuda for cuda, needs in CUDA_TOOLKIT_DRIVER.items() if major >= needs]
    return max(fits) if fits else None


def torch_for_driver(driver: str, torch_version: str | None) -> str:
    """The command for a torch built for the CUDA this driver runs: cu130 from 580, cu128 from 570, cu126 from 525
    (below 560 through minor-version compatibility)."""
    major = int(driver.split(".")[0])
    tag = "cu130" if major >= 580 else "cu128" if major >= 570 else "cu126" if major >= 525 else None
    if tag is None:
        return f"update the NVIDIA driver: CUDA 12 needs >= {CUDA_MAJOR_MIN_DRIVER[12]}, CUDA 13 >= 580"
    version = (torch_version or "").split("+")[0]
    pin = f"torch=={version}" if version else "torch"
    fix = (f"pip install --force-reinstall {pin} --index-url {TORCH_INDEX}/{tag} (if that version has no {tag} "
           "build, the newest that has)")
    return fix if major >= 580 else f"{fix}, or update the NVIDIA driver to >= 580 for CUDA 13"


def _driver_check(f: Facts) -> Check:
    """The NVIDIA driver against the CUDA torch was built for: too old a driver hides the GPU from torch."""
    if f.driver_version is None:
        return Check("nvidia driver", "ok", "none found (nvidia-smi, /proc/driver/nvidia/version)")
    runs = driver_runs(f.driver_version, f.driver_cuda)
    runs_text = f"runs CUDA {'.'.join(map(str, runs))}" if runs else "too old for CUDA 11"
    detail = f"{f.driver_version} ({runs_text})"
    built = _cuda(f.torch_cuda)
    if built is None:
        return Check("nvidia driver", "ok", detail)
    needs = CUDA_MAJOR_MIN_DRIVER.get(built[0], 0)
    major = int(f.driver_version.split(".")[0])
    if major < needs:
        return Check("nvidia driver", "problem",
                     f"{detail}, but torch {f.torch_version} is built for CUDA {f.torch_cuda}, which needs driver "
                     f">= {needs}: torch sees no GPU and everything runs on the CPU",
                     torch_for_driver(f.driver_version, f.torch_version))
    full = CUDA_TOOLKIT_DRIVER.get(built, needs)
    if major < full:
        return Check("nvidia driver", "warning",
                     f"{detail}; torch's CUDA {f.torch_cuda} wants driver >= {full} for all its features and runs "
                     "here through CUDA minor-version compatibility (no PTX JIT: a kernel without machine code "
                     "for this GPU fails)", torch_for_driver(f.driver_version, f.torch_version))
    return Check("nvidia driver", "ok", detail)


def _no_gpu_check(f: Facts) -> Check:
    """torch sees no GPU: say why, as far as the facts tell."""
    if not f.torch_cuda:
        if f.driver_version is not None:
            return Check("gpu", "warning", f"torch is a CPU build, but NVIDIA driver {f.driver_version} is here: "
                         "training and evaluation run on the CPU", torch_for_driver(f.driver_version, f.torch_version))
        return Check("gpu", "warning", "no CUDA GPU: generation, pairing and the demo run on the CPU; "
                     "4-bit QLoRA training needs a CUDA GPU")
    lead = "torch has CUDA but sees no GPU"
    if f.driver_version is None:
        return Check("gpu", "warning", f"{lead}: no NVIDIA driver found; everything runs on the CPU",
                     "on a GPU machine install the NVIDIA driver (nvidia-smi should list the GPU; in Docker, run with "
                     "--gpus all); on a CPU machine this is fine")
    if f.cuda_visible_devices is not None and f.cuda_visible_devices.strip() in ("", "-1", "none", "NoDevFiles"):
        return Check("gpu", "warning", f"{lead}: CUDA_VISIBLE_DEVICES={f.cuda_visible_devices!r} hides every GPU",
                     "unset CUDA_VISIBLE_DEVICES (or list the GPUs to use, e.g. CUDA_VISIBLE_DEVICES=0)")
    built = _cuda(f.torch_cuda)
    if built and int(f.driver_version.split(".")[0]) < CUDA_MAJOR_MIN_DRIVER.get(built[0], 0):
        return Check("gpu", "problem", f"{lead}: driver {f.driver_version} is too old for CUDA {f.torch_cuda} "
                     "(the nvidia driver line has the fix)")
    said = f" (torch says: {f.torch_cuda_warning})" if f.torch_cuda_warning else ""
    return Check("gpu", "warning", f"{lead} although NVIDIA driver {f.driver_version} is here{said}",
                 "run nvidia-smi: if it fails, reload or reinstall the driver (or reboot after a driver update); "
                 f"check CUDA_VISIBLE_DEVICES ({f.cuda_visible_devices!r})")


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
