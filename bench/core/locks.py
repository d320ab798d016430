"""Locks between processes: one timing job per machine at a time, one writer per results folder.

Jobs that measure at once on one machine slow each other down (shared cores, caches, memory
bandwidth, GPU), whatever launched them: a multirun through submitit_local starts every job at
once, and two `python -m bench` commands know nothing of each other. Both locks are flock(2) locks,
which the kernel releases when the process ends, however it ends, so a killed job never leaves a
stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.errors import BenchConfigError

TIMING_LOCK = "/tmp/attention_zoo.timing.lock"  # machine-wide: every user's jobs see the same /tmp (per GPU: .gpuN)


def _open_for_locking(path: Path) -> int:
    """A read-only descriptor of the lock file, created when missing (flock needs no write access)."""
    try:
        # opened without O_CREAT first: with fs.protected_regular, O_CREAT on a file that another
        # user created in a sticky folder such as /tmp is refused even when the file exists
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)


def physical_gpu(device: str) -> str:
    """The machine's name for a CUDA device of this process, from the environment (no CUDA call).

    cuda:i is the i-th GPU this process sees: the i-th of SLURM's GPUs for the step or job (SLURM
    numbers them machine-wide, also where cgroups make every job see its own as GPU 0), else of
    CUDA_VISIBLE_DEVICES (an index or a UUID), else GPU i.
    """
    index = int(device.split(":")[1]) if ":" in device else 0
    for variable in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        visible = [name.strip() for name in os.environ.get(variable, "").split(",") if name.strip()]
        if index < len(visible):
            return visible[index]
    return str(index)


def timing_lock_paths(path: Path, devices: Iterable[str]) -> list[Path]:
    """The lock files of a run on these devices: the machine's at `path`, or one per GPU when every cell is on CUDA.

    One-GPU jobs on an 8-GPU node then measure at once, each on its GPU; a run with CPU cells holds the
    machine-wide lock (its timings share cores, caches and memory bandwidth with everything).
    """
    devices = set(devices)
    if not devices or any(not d.startswith("cuda") for d in devices):
        return [path]
    gpus = sorted({re.sub(r"[^A-Za-z0-9_-]", "_", physical_gpu(d)) for d in devices})
    return [path.with_name(f"{path.stem}.gpu{gpu}{path.suffix}") for gpu in gpus]


@contextmanager
def timing_lock(path: str | Path | None, devices: Iterable[str] = ("cpu",)) -> Iterator[bool]:
    """Hold the timing locks of a run on these devices (waiting for them); yields whether it measures exclusively.

    `path` None measures without the lock (yields False): the rows then say so, and the report
    still detects overlapping measurements from their start and end times.
    """
    if path is None:
        yield False
        return
    descriptors = []
    try:
        for lock_path in timing_lock_paths(Path(path), devices):  # sorted: runs sharing GPUs lock in one order
            try:
                descriptors.append(_open_for_locking(lock_path))
            except OSError as error:
                raise BenchConfigError(
                    f"timing_lock={lock_path} cannot be opened ({error.strerror}): give a file path in a folder "
                    "you can write, or null"
                ) from None
            try:
                fcntl.flock(descriptors[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for the timing lock {lock_path}: another timing job is measuring there", flush=True)
                fcntl.flock(descriptors[-1], fcntl.LOCK_EX)
        yield True
    finally:
        for descriptor in descriptors:
            os.close(descriptor)  # releases the lock


def claim_folder(folder: Path) -> int:
    """Lock a results folder for this process, or fail at once when another process writes there.

    Returns the descriptor to close when done. The folder itself is locked, not a file in it, so its
    files can be replaced (written whole, then renamed) while the lock holds.
    """
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise BenchConfigError(
            f"{folder} is being written by another process: give each run its own folder (hydra.run.dir / "
            "hydra.sweep.dir)"
        ) from None
    return descriptor
