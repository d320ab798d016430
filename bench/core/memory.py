"""Peak memory of one call (CPU: VmHWM after a clear_refs reset; CUDA: allocator stats), and its prediction.

On CPU the peak is process-wide: peak_bytes = VmHWM during the call - VmRSS before it. glibc keeps
freed memory for reuse, so a call could run in memory an earlier call freed and show no peak;
`measure_peak` therefore trims the heap first (malloc_trim hands free pages back to the OS, so the
call faults them in again and they count). The allocator is otherwise left as it is in any process:
forcing every allocation through mmap would make each timed call page-fault its buffers afresh.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.cases import Cell

DENSE_SCORE_COPIES = {"fwd": 2, "bwd": 4, "fwd_bwd": 4}  # scores + probs; backward adds their gradients
LINEAR_MEMORY_FACTOR = 4  # workspace of O(N)-memory entries, in multiples of their inputs and outputs
REFERENCE_ROWS = 256  # query rows of the float64 error reference (see accuracy.py)
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
MAPPED_BLOCK_BYTES = 64 * 1024  # map_large_blocks: blocks this large or larger get pages of their own


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


def predict_bytes(cell: Cell, memory_exponent: float) -> int:
    """Memory the cell should need, from the entry's declared memory complexity; used to skip hopeless cells.

    Quadratic entries hold the B*Hq*Nq*Nk scores and probabilities (and in backward their gradients);
    the others a few times their inputs and outputs. The float64 error reference adds its sampled rows.
    """
    p = cell.problem
    itemsize = p.torch_dtype.itemsize
    q_and_out = 2 * p.batch * p.q_heads * p.q_len * p.head_dim
    k_and_v = 2 * p.batch * p.kv_heads * p.kv_len * p.head_dim
    io_bytes = (q_and_out + k_and_v) * itemsize * (1 if cell.mode == "fwd" else 2)  # with gradients
    scores = p.batch * p.q_heads * p.q_len * p.kv_len
    if memory_exponent >= 2:
        # scores are kept in the compute dtype: float32 for half-precision inputs
        work_bytes = DENSE_SCORE_COPIES[cell.mode] * scores * p.compute_dtype.itemsize + io_bytes
    else:
        work_bytes = LINEAR_MEMORY_FACTOR * io_bytes
    # the reference holds float64 scores and probabilities for its rows, and float64 copies of k and v
    reference_bytes = 8 * (2 * p.batch * p.q_heads * min(p.q_len, REFERENCE_ROWS) * p.kv_len + 2 * k_and_v)
    return int(work_bytes + reference_bytes)
