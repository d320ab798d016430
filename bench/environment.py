"""What the numbers were measured on: versions, machine, threads, commit; recorded with every row."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" when unknown)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def device_name(device: str) -> str:
    """A human name for the device a cell runs on: the GPU's name, or the CPU model."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return cpu_model()


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
