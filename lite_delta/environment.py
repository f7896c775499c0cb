"""What a measurement ran on — device, driver, CUDA, torch and package versions — for benchmark JSON files.

Shared by the stage benchmarks (a stage never imports another stage). Nothing here needs a GPU: on a
machine without one the GPU fields are None.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = ("lite-delta", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
            "unsloth", "unsloth_zoo", "llama_cpp_python", "gguf", "triton", "numpy")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def nvidia_smi() -> dict | None:
    """Name, driver and memory of the first GPU as nvidia-smi reports them; None without one."""
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    name, driver, memory = (part.strip() for part in line.split(",")[:3])
    return {"name": name, "driver": driver, "memory": memory}


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment(names=PACKAGES) -> dict:
    """One JSON-ready record of the machine and software a figure was measured with."""
    smi = nvidia_smi()
    record = {
        "cpu": cpu_name(),
        "cores": cores(),
        "python": platform.python_version(),
        "gpu": smi["name"] if smi else None,
        "gpu_memory": smi["memory"] if smi else None,
        "driver": smi["driver"] if smi else None,
        "cuda": None,
        "torch_cuda_available": False,
        "packages": package_versions(names),
    }
    try:
        import torch
    except ImportError:
        return record
    record["cuda"] = torch.version.cuda
    record["torch_cuda_available"] = torch.cuda.is_available()
    if record["torch_cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        record["torch_device"] = props.name
        record["compute_capability"] = f"{props.major}.{props.minor}"
        record["torch_device_memory_gib"] = round(props.total_memory / 1024**3, 2)
    return record
