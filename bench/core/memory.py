"""Peak memory of one call (CPU: VmHWM after a clear_refs reset; CUDA: allocator stats) and the heap policies.

On CPU the peak is process-wide: peak_bytes = VmHWM during the call - VmRSS before it. glibc keeps
freed memory for reuse, so a call could run in memory an earlier call freed and show no peak;
`measure_peak` therefore trims the heap first (malloc_trim hands free pages back to the OS, so the
call faults them in again and they count).

glibc's own policy depends on history: it maps a large block afresh (and faults in its pages) or serves
it from the heap depending on the largest block freed before, up to 32 MiB, above which every block is
mapped at every call. Measurements therefore pick one of two fixed policies: `map_large_blocks` (every
block of 64 KiB or more in pages of its own: VmHWM follows live memory, for peaks) and
`keep_heap_resident` (no block mapped or trimmed: calls reuse faulted-in pages, for timing); `timing_heap` is
the policy timed calls run on, the other restored after. A process that switches between them runs
with glibc's per-thread cache off (`without_thread_cache`): its small chunks, freed while timed calls
ran on the resident heap, stay in use to the heap and pin the large free chunks under them, and the
next peak's call reuses those (performer's forward peak at N = 1024 read 13.1 MiB after a fwd_bwd of
`full`, 8.6 MiB alone).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from bench.core.heaps import TIMING_HEAPS

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
MAPPED_BLOCK_BYTES = 64 * 1024  # map_large_blocks: blocks this large or larger get pages of their own
TRIM_BYTES = 128 * 1024  # map_large_blocks: free memory above the heap's top past this is handed back (glibc's default)
NO_THREAD_CACHE = "glibc.malloc.tcache_count=0"  # a GLIBC_TUNABLES setting, read when a process starts


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def status_bytes(field: str, pid: int | str = "self") -> int:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM, ...) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"/proc/{pid}/status has no {field}")


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo: what can be allocated without swapping or the OOM killer."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise KeyError("/proc/meminfo has no MemAvailable")


def keep_heap_resident() -> None:
    """Serve every allocation from glibc's heap and keep freed pages there: each call reuses resident memory.

    By default glibc maps large blocks fresh (mmap) and unmaps them on free, with a threshold that
    moves with what the process freed before; a call then page-faults its buffers afresh or not
    depending on history. On this VM that doubled a fixed 4-head N=512 attention (4.8 -> 9-10 ms)
    and made `full` at N=2048 take 209 ms instead of 89 ms. With no mmap and no trim on free, every
    timed call runs on memory already faulted in; measure_peak still hands free pages back first.
    """
    _mallopt(M_MMAP_MAX, 0)
    _mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def map_large_blocks() -> None:
    """Map every block of MAPPED_BLOCK_BYTES or more afresh and unmap it on free, so RSS follows live memory.

    Under keep_heap_resident a new buffer may land in a freed chunk's resident pages or in new ones,
    depending on the heap's history: `full`'s forward peak at one N read 33 or 49 MiB between runs
    (a third N x N buffer counted or not). With each large block in pages of its own, VmHWM during a
    call is the peak of what it holds (page-rounded). Not for timed calls: each would page-fault.
    """
    _mallopt(M_MMAP_THRESHOLD, MAPPED_BLOCK_BYTES)
    _mallopt(M_MMAP_MAX, 2**20)
    _mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)


@contextmanager
def without_thread_cache() -> Iterator[None]:
    """Processes started inside run with glibc's per-thread cache off (GLIBC_TUNABLES, others kept).

    The cache holds up to 7 freed chunks of each small size as in use; malloc_trim cannot consolidate
    them, so those freed on a resident heap's top pin every free chunk below. Off, they return to the
    heap's bins, at about 0.1 us more per small op (x + 1 on 16 floats, interleaved processes: 3.8 -> 4.0 us).
    """
    before = os.environ.get("GLIBC_TUNABLES")
    os.environ["GLIBC_TUNABLES"] = NO_THREAD_CACHE if not before else f"{before}:{NO_THREAD_CACHE}"
    try:
        yield
    finally:
        if before is None:
            del os.environ["GLIBC_TUNABLES"]
        else:
            os.environ["GLIBC_TUNABLES"] = before


@contextmanager
def timing_heap(policy: str) -> Iterator[None]:
    """Run what is inside on the timing heap `policy` (TIMING_HEAPS), then map large blocks again.

    The process is expected to map large blocks outside (its peaks are measured so): a resident heap's
    freed blocks, left there, would be reused by the next peak's call and blur it (see map_large_blocks).
    """
    if policy not in TIMING_HEAPS:
        raise ValueError(f"timing heap {policy!r} is not one of {', '.join(TIMING_HEAPS)}")
    if policy == "resident":
        keep_heap_resident()
    try:
        yield
    finally:
        map_large_blocks()


def _mallopt(parameter: int, value: int) -> None:
    if not _libc().mallopt(parameter, value):
        raise OSError(f"glibc's mallopt refused parameter {parameter} = {value}")


def measure_peak(device_type: str, call: Callable[[], Any]) -> tuple[int, Any]:
    """(peak bytes of call() above what was held before it, call's result)."""
    if device_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, result
    _libc().malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = status_bytes("VmRSS")
    result = call()
    return max(0, status_bytes("VmHWM") - before), result
