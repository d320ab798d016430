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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.errors import BenchConfigError

TIMING_LOCK = "/tmp/attention_zoo.timing.lock"  # machine-wide: every user's jobs see the same /tmp


def _open_for_locking(path: Path) -> int:
    """A read-only descriptor of the lock file, created when missing (flock needs no write access)."""
    try:
        # opened without O_CREAT first: with fs.protected_regular, O_CREAT on a file that another
        # user created in a sticky folder such as /tmp is refused even when the file exists
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)


@contextmanager
def timing_lock(path: str | Path | None) -> Iterator[bool]:
    """Hold the machine's timing lock at `path` (waiting for it); yields whether measuring runs exclusively.

    `path` None measures without the lock (yields False): the rows then say so, and the report
    still detects overlapping measurements from their start and end times.
    """
    if path is None:
        yield False
        return
    path = Path(path)
    try:
        descriptor = _open_for_locking(path)
    except OSError as error:
        raise BenchConfigError(
            f"timing_lock={path} cannot be opened ({error.strerror}): give a file path in a folder you can write, "
            "or null"
        ) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for the timing lock {path}: another timing job on this machine is measuring", flush=True)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield True
    finally:
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
