"""`lite-delta doctor`: the real checks on this machine, and the judgement on synthetic machines."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from lite_delta.doctor import (CUDA_REBUILD, PINS, UNSLOTH_PIN, Facts, driver_runs, judge, nvidia_driver,
                               precision_for, proc_driver_version)


def _cuda_box(**overrides) -> Facts:
    facts = Facts(
        python=(3, 11, 7), torch_version="2.13.0+cu128", torch_cuda="12.8", gpu_name="NVIDIA GeForce RTX 4090",
        gpu_capability=(8, 9), gpu_free_gb=23.0, llama_version="0.3.36", llama_gpu_offload=True,
        bitsandbytes="0.50.2", unsloth=UNSLOTH_PIN, versions=dict(PINS),
        disk_free_gb={"runs": 200.0, "Hub cache": 200.0}, hub_reachable=True, driver_version="580.95.05",
    )
    for key, value in overrides.items():
        setattr(facts, key, value)
    return facts


def _by_name(checks):
    return {c.name: c for c in checks}


def test_doctor_runs_here_without_a_gpu_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "lite_delta", "doctor"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("python", "torch", "gpu", "llama-cpp-python", "bitsandbytes", "unsloth", "pins", "disk", "hub"):
        assert name in proc.stdout
    assert "no CUDA GPU" in proc.stdout and "CPU build" in proc.stdout
    assert "offline mode" in proc.stdout, "tests run with HF_HUB_OFFLINE=1"
    assert "Traceback" not in proc.stderr
    assert "nvidia driver" in proc.stdout
    if not shutil.which("nvidia-smi") and not Path("/proc/driver/nvidia/version").exists():
        assert "none found (nvidia-smi, /proc/driver/nvidia/version)" in proc.stdout


def test_a_ready_cuda_machine_is_all_ok():
    checks = judge(_cuda_box())
    assert all(c.status == "ok" for c in checks), [c for c in checks if c.status != "ok"]
    assert _by_name(checks)["precision"].detail == "bf16"


def test_cpu_only_llama_build_on_a_gpu_machine_is_a_problem_with_the_rebuild_command():
    check = _by_name(judge(_cuda_box(llama_gpu_offload=False)))["llama-cpp-python"]
    assert check.status == "problem" and "without CUDA" in check.detail
    assert check.fix == CUDA_REBUILD


def test_the_llama_line_says_whether_cpu_extra_buffers_are_on_and_why_not():
    plain = _by_name(judge(_cuda_box(llama_amx=False, llama_extra_buffers=True)))["llama-cpp-python"].detail
    assert "extra buffers (repacked weights) on" in plain and "AMX" not in plain
    amx_off = _by_name(judge(_cuda_box(llama_amx=True, llama_extra_buffers=False)))["llama-cpp-python"].detail
    assert "off because this CPU runs the AMX kernels" in amx_off and "LITE_DELTA_CPU_EXTRA_BUFFERS=1" in amx_off
    amx_on = _by_name(judge(_cuda_box(llama_amx=True, llama_extra_buffers=True)))["llama-cpp-python"].detail
    assert "(repacked weights, AMX) on" in amx_on and "because" not in amx_on


def test_precision_follows_the_card():
    assert precision_for((7, 5)).startswith("fp16"), "a T4 has no bf16"
    assert precision_for((8, 0)) == "bf16"
    assert precision_for(None).startswith("fp32")
    assert _by_name(judge(_cuda_box(gpu_capability=(7, 5))))["precision"].detail.startswith("fp16")


def test_blocking_and_non_blocking_findings():
    checks = _by_name(judge(_cuda_box(torch_version=None, disk_free_gb={"runs": 0.5, "Hub cache": 5.0},
                                      unsloth="2025.1.1", bitsandbytes=None, hub_reachable=False,
                                      versions={**PINS, "trl": "0.20.0"})))
    assert checks["torch"].status == "problem"
    assert checks["disk (runs)"].status == "problem" and checks["disk (Hub cache)"].status == "warning"
    assert checks["unsloth"].status == "warning" and UNSLOTH_PIN in checks["unsloth"].fix
    assert checks["bitsandbytes"].status == "problem"
    assert checks["pins"].status == "warning" and "trl 0.20.0" in checks["pins"].detail
    assert checks["hub"].status == "warning" and "HF_HUB_OFFLINE" in checks["hub"].fix
    assert checks["python"].status == "ok"
    assert judge(_cuda_box(python=(3, 9, 18)))[0].status == "problem"


def _old_driver_box(**overrides) -> Facts:
    """torch >= 2.11 from PyPI (a CUDA 13.0 build) on a machine whose driver runs CUDA 12.8 at most."""
    machine = dict(torch_version="2.11.0+cu130", torch_cuda="13.0", driver_version="570.133.20", gpu_name=None,
                   gpu_capability=None, gpu_free_gb=None,
                   torch_cuda_warning="CUDA initialization: The NVIDIA driver on your system is too old")
    return _cuda_box(**{**machine, **overrides})


def test_a_cuda_13_torch_on_a_driver_below_580_is_a_problem_with_a_torch_for_the_driver():
    checks = _by_name(judge(_old_driver_box()))
    driver = checks["nvidia driver"]
    assert driver.status == "problem"
    assert "570.133.20 (runs CUDA 12.8)" in driver.detail and "needs driver >= 580" in driver.detail
    assert "everything runs on the CPU" in driver.detail
    assert "torch==2.11.0 --index-url https://download.pytorch.org/whl/cu128" in driver.fix
    gpu = checks["gpu"]
    assert gpu.status == "problem" and "too old for CUDA 13.0" in gpu.detail
    assert any(c.status == "problem" for c in checks.values()), "the doctor exits 1 on such a machine"


def test_the_suggested_torch_follows_the_driver():
    fix = _by_name(judge(_old_driver_box(driver_version="535.183.01")))["nvidia driver"].fix
    assert "/whl/cu126" in fix, "CUDA 12.x runs on >= 525 through minor-version compatibility"
    fix = _by_name(judge(_old_driver_box(driver_version="470.256.02")))["nvidia driver"].fix
    assert fix.startswith("update the NVIDIA driver")
    ok = _by_name(judge(_cuda_box(torch_version="2.11.0+cu130", torch_cuda="13.0", driver_version="580.65.06")))
    assert ok["nvidia driver"].status == "ok" and "runs CUDA 13.0" in ok["nvidia driver"].detail


def test_a_cuda_12_8_torch_on_an_older_12_driver_warns_of_minor_version_compatibility():
    check = _by_name(judge(_cuda_box(driver_version="550.144.03")))["nvidia driver"]
    assert check.status == "warning" and "minor-version compatibility" in check.detail
    assert "wants driver >= 570" in check.detail and "/whl/cu126" in check.fix


def test_driver_runs_reads_nvidias_table_unless_the_driver_says():
    assert driver_runs("570.133.20") == (12, 8)
    assert driver_runs("580.65.06") == (13, 0)
    assert driver_runs("535.183.01") == (12, 2)
    assert driver_runs("418.87.00") is None
    assert driver_runs("575.57.08", "12.9") == (12, 9)


def test_why_a_cuda_torch_sees_no_gpu():
    def gpu(**overrides):
        return _by_name(judge(_cuda_box(gpu_name=None, gpu_capability=None, gpu_free_gb=None, **overrides)))["gpu"]

    assert "no NVIDIA driver found" in gpu(driver_version=None).detail
    hidden = gpu(cuda_visible_devices="")
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in hidden.detail and "unset" in hidden.fix
    other = gpu(torch_cuda_warning="CUDA initialization: Unexpected error from cudaGetDeviceCount()")
    assert other.status == "warning" and "580.95.05 is here" in other.detail
    assert "torch says: CUDA initialization: Unexpected error" in other.detail and "nvidia-smi" in other.fix
    cpu_torch = gpu(torch_version="2.13.0+cpu", torch_cuda=None)
    assert "torch is a CPU build, but NVIDIA driver 580.95.05 is here" in cpu_torch.detail
    assert "/whl/cu130" in cpu_torch.fix and "update the NVIDIA driver" not in cpu_torch.fix


def test_the_driver_is_read_without_torch(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--query-gpu=driver_version" ]; then echo 570.133.20; '
                    'else echo "| NVIDIA-SMI 570.133.20   Driver Version: 570.133.20   CUDA Version: 12.8 |"; fi\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert nvidia_driver() == ("570.133.20", "12.8")
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver'\n"
                    "exit 9\n")
    version, cuda = nvidia_driver()
    assert cuda is None and (version is None or Path("/proc/driver/nvidia/version").exists())


def test_the_kernel_module_line_gives_the_version():
    assert proc_driver_version("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.133.20  Fri Mar 14 05:17:09 "
                               "UTC 2025\nGCC version:  gcc version 12.2.0") == "570.133.20"
    assert proc_driver_version("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
                               "(dvs-builder@U16-I3-B03-4-3)  Tue Jul 22 2025") == "580.65.06"
    assert proc_driver_version("") is None
