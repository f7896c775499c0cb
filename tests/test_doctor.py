"""`lite-delta doctor`: the real checks on this machine, and the judgement on synthetic machines."""

from __future__ import annotations

import subprocess
import sys

from lite_delta.doctor import CUDA_REBUILD, PINS, UNSLOTH_PIN, Facts, judge, precision_for


def _cuda_box(**overrides) -> Facts:
    facts = Facts(
        python=(3, 11, 7), torch_version="2.13.0+cu128", torch_cuda="12.8", gpu_name="NVIDIA GeForce RTX 4090",
        gpu_capability=(8, 9), gpu_free_gb=23.0, llama_version="0.3.36", llama_gpu_offload=True,
        bitsandbytes="0.50.2", unsloth=UNSLOTH_PIN, versions=dict(PINS),
        disk_free_gb={"runs": 200.0, "Hub cache": 200.0}, hub_reachable=True,
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
