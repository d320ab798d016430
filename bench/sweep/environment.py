"""What the numbers were measured on: versions, machine, threads, commit; recorded with every row."""

from __future__ import annotations

import math
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from bench.sweep.flops import gemm_size

REPO = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" when unknown)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def _nvidia_smi(uuid: str) -> dict[str, str]:
    """driver_version and the clocks of one GPU from nvidia-smi ({} when it cannot tell)."""
    fields = ("driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem")
    command = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", f"--id=GPU-{uuid}"]
    try:
        line = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [value.strip() for value in line.split(",")]
    return dict(zip(fields, values, strict=True)) if len(values) == len(fields) else {}


def _megahertz(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # absent, or "[N/A]"
        return math.nan


def device_environment(device: str) -> dict[str, Any]:
    """The columns describing the device a cell runs on. CUDA: asked in the worker, never in the runner.

    Clocks are read when this is called; the runner calls it right after the GEMM ceiling, with the
    GPU warm. gpu_memory_free_bytes is what the cells may use (the allocator's cache emptied first).
    """
    columns: dict[str, Any] = {
        "device_name": cpu_model(), "cuda_version": torch.version.cuda or "", "cudnn_version": "",
        "driver_version": "", "compute_capability": "", "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32, "flash_version": "", "sm_clock_mhz": math.nan,
        "max_sm_clock_mhz": math.nan, "memory_clock_mhz": math.nan, "gpu_memory_free_bytes": math.nan,
        "gemm_size": gemm_size(device),
    }  # fmt: skip
    if not device.startswith("cuda"):
        return columns
    index = torch.cuda._get_device_index(device, optional=True)
    properties = torch.cuda.get_device_properties(index)
    torch.cuda.empty_cache()
    smi = _nvidia_smi(str(properties.uuid))
    return {
        **columns,
        "device_name": properties.name,
        "cudnn_version": str(torch.backends.cudnn.version() or ""),
        "driver_version": smi.get("driver_version", ""),
        "compute_capability": f"{properties.major}.{properties.minor}",
        "flash_version": torch.nn.attention._get_flash_version(),  # the FlashAttention SDPA's flash backend is
        "sm_clock_mhz": _megahertz(smi.get("clocks.sm")),
        "max_sm_clock_mhz": _megahertz(smi.get("clocks.max.sm")),
        "memory_clock_mhz": _megahertz(smi.get("clocks.mem")),
        "gpu_memory_free_bytes": torch.cuda.mem_get_info(index)[0],
    }


def git_commit() -> str:
    """HEAD's commit, with "+dirty" when the tree has uncommitted changes ("" outside a git checkout)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def slurm_job_id() -> str:
    """The SLURM job this runs in, as squeue, sacct and scancel name it: `<array job>_<task>` in a job array."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID", "")


def environment(threads: int) -> dict[str, Any]:
    """The environment columns shared by every row of a run (device_name and the times are per row)."""
    return {
        "torch_version": torch.__version__,
        "cpu_model": cpu_model(),
        "threads": threads,
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
        "slurm_job_id": slurm_job_id(),  # links the rows to the cluster's job logs
    }
