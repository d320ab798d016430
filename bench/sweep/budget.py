"""The sweep's memory budget: what a cell should need (from the entry's declared complexity) and what it may use.

A cell predicted to need more than it may use is skipped with its prediction, before the worker
spends minutes swapping or is killed.
"""

from __future__ import annotations

import math
from typing import Any

from bench.core.cell import Cell
from bench.core.modes import MODES
from bench.sweep.accuracy import REFERENCE_ROWS
from bench.sweep.flops import cell_flops

MEMORY_LIMIT_FRACTION = 0.9  # default worker RSS limit, as a fraction of MemAvailable at start
SCORE_COPIES = 2  # scores and probabilities, per pass: a backward adds their gradients
LINEAR_MEMORY_FACTOR = 4  # workspace of O(N)-memory entries, in multiples of their inputs and outputs


def memory_limit(cell: Cell, worker_limit_bytes: int, device: dict[str, Any]) -> int:
    """The bytes a cell may need: a fraction of the GPU's free memory on CUDA, else the worker's RSS limit."""
    free = device.get("gpu_memory_free_bytes", math.nan)
    if cell.problem.device_type == "cuda" and not math.isnan(free):
        return int(MEMORY_LIMIT_FRACTION * free)
    return worker_limit_bytes


def predict_bytes(cell: Cell, memory_exponent: float) -> int:
    """Memory the cell should need, from the entry's declared memory complexity; used to skip hopeless cells.

    Quadratic entries hold the B*Hq*Nq*Nk scores and probabilities (and in backward their gradients);
    the others a few times their inputs and outputs. The float64 error reference adds its sampled rows.
    """
    p = cell.problem
    itemsize = p.torch_dtype.itemsize
    if cell.mode == "decode":
        # k and v drawn in float64, cast, and copied into the cache; scores are T x (L+T) per head
        cache = 2 * p.batch * p.kv_heads * p.kv_len * p.head_dim
        return int(cache * (8 + 2 * itemsize) + 2 * p.batch * p.q_heads * p.q_len * p.kv_len * 8)
    q_and_out = 2 * p.batch * p.q_heads * p.q_len * p.head_dim
    k_and_v = 2 * p.batch * p.kv_heads * p.kv_len * p.head_dim
    io_bytes = (q_and_out + k_and_v) * itemsize * (1 if cell.mode == "fwd" else 2)  # with gradients
    scores = p.batch * p.q_heads * p.q_len * p.kv_len
    if memory_exponent >= 2:
        # scores are kept in the compute dtype: float32 for half-precision inputs
        work_bytes = SCORE_COPIES * len(MODES[cell.mode].passes) * scores * p.compute_dtype.itemsize + io_bytes
    else:
        work_bytes = LINEAR_MEMORY_FACTOR * io_bytes
    # the reference holds float64 scores and probabilities for its rows, and float64 copies of k and v
    reference_bytes = 8 * (2 * p.batch * p.q_heads * min(p.q_len, REFERENCE_ROWS) * p.kv_len + 2 * k_and_v)
    return int(work_bytes + reference_bytes)


def skip_reason(cell: Cell, predicted_bytes: int, limit_bytes: int, max_cell_flops: float | None) -> str | None:
    """Why a cell is skipped before it runs (predicted over the memory limit, over sweep.max_cell_flops), or None."""
    if predicted_bytes > limit_bytes:
        return f"predicted {predicted_bytes / 2**30:.1f} GiB exceeds the memory limit {limit_bytes / 2**30:.1f} GiB"
    if max_cell_flops is not None and (flops := cell_flops(cell)) > max_cell_flops:
        return f"{flops:.3g} FLOPs exceed sweep.max_cell_flops={max_cell_flops:.3g}"
    return None
