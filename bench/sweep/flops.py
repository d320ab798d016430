"""FLOP counts of a cell (from the entry's declaration) and the machine's GEMM ceiling to compare them with."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

import attention_zoo
from attention_zoo import Problem
from bench.core.cell import Cell
from bench.core.modes import MODES
from bench.sweep.timing import on_device, synchronize, timer_for

# The square matmul used as the ceiling. CPU: big enough for the BLAS to reach its steady state, small
# enough to take about a second on 2 cores. CUDA: 8192 (or the largest power of two whose operands fit
# in a quarter of the free memory), warmed up for WARMUP_S (do_bench's 25 ms and more: the SM clock
# rises from idle first), then at least 10 flushed samples, as do_bench takes.
GEMM_SIZE = {"cpu": 2048, "cuda": 8192}
GEMM_SAMPLES = {"cpu": (3, 3, 0.0), "cuda": (10, 100, 0.1)}  # min samples, max samples, sampling budget (s)
GEMM_WARMUP_S = {"cpu": 0.0, "cuda": 0.1}


def cell_flops(cell: Cell) -> float:
    """FLOPs of the timed work of one cell, as the entry counts them (2 per multiply-add).

    A decode step's are the causal prefix of L + T tokens' minus that of L: the work of the last T rows.
    A ragged batch's (sweep.lengths) are useful work only: each sequence counted at its real length,
    as a batch of one, so its padded query rows and keys count nowhere (cell_flops_executed counts them).
    """
    entry = attention_zoo.get(cell.impl)
    # counted for the same problem on the host: FLOPs do not depend on the device, and the runner that
    # counts them must not touch the GPU (flex's count builds its masks on the problem's device)
    problem = dataclasses.replace(cell.problem, device="cpu")
    if cell.mode == "decode":
        return _decode_flops(entry, problem, cell.hparams)
    if cell.lengths:  # a ragged batch: each sequence at its own length
        return sum(
            entry.flops(
                dataclasses.replace(problem, batch=1, q_len=n, kv_len=n, kv_valid_lens=None), timed, **cell.hparams
            )
            for n in problem.kv_valid_lens
            for timed in MODES[cell.mode].timed
        )
    return sum(entry.flops(problem, timed, **cell.hparams) for timed in MODES[cell.mode].timed)


def _decode_flops(entry: attention_zoo.Entry, problem: Problem, hparams) -> float:
    """The forward FLOPs of causal self-attention over L + T tokens minus over L: what a step of T adds."""
    context = problem.kv_len - problem.q_len

    def prefix(length: int) -> float:
        square = dataclasses.replace(problem, q_len=length, kv_len=length)
        return entry.flops(square, "forward", **hparams)

    return prefix(problem.kv_len) - (prefix(context) if context else 0.0)


def gemm_size(device: str) -> int:
    """The ceiling's matrix size on a device: GEMM_SIZE, halved on CUDA until three operands fit easily."""
    device_type = device.split(":")[0]
    size = GEMM_SIZE[device_type]
    if device_type == "cuda":
        free_bytes = torch.cuda.mem_get_info(torch.cuda._get_device_index(device, optional=True))[0]
        while size > 256 and 3 * size * size * 4 > free_bytes / 4:
            size //= 2
    return size


def cell_flops_executed(cell: Cell) -> float:
    """FLOPs the cell's entry executes, masked or padded work included (equal to cell_flops where it has none)."""
    if cell.mode == "decode":  # a step executes the rows it adds: its T x T tail is its only masked work
        return cell_flops(cell)
    entry = attention_zoo.get(cell.impl)
    return sum(entry.flops_executed(cell.problem, timed, **cell.hparams) for timed in MODES[cell.mode].timed)


def measure_gemm_flop_per_s(device: str, dtype: str) -> float:
    """FLOP/s of a square matmul on the device and dtype: the median of flushed samples after a warm-up."""
    problem = Problem(dtype=dtype, device=device)  # validates the pair and maps the dtype name
    device_type, size = problem.device_type, gemm_size(device)
    with on_device(device):
        a, b = (torch.randn(size, size, device=device).to(problem.torch_dtype) for _ in range(2))
        product = torch.empty_like(a)  # written in place: no call allocates (or page-faults) its output
        gemm = lambda _=None: torch.mm(a, b, out=product)  # noqa: E731
        started = time.perf_counter()
        gemm()
        synchronize(device_type)
        while time.perf_counter() - started < GEMM_WARMUP_S[device_type]:
            gemm()
            synchronize(device_type)
        samples = timer_for(device_type)(lambda: None, gemm, *GEMM_SAMPLES[device_type])
    return 2 * size**3 / (samples.median / 1e3)


def with_flops(row: dict[str, Any], cell: Cell, gemm_flop_per_s: float) -> dict[str, Any]:
    """FLOP/s and % of GEMM on useful flops; pct_of_gemm_executed on what the entry executes (waste included)."""
    flops, flops_executed = cell_flops(cell), cell_flops_executed(cell)
    seconds = row.get("time_ms_median", math.nan) / 1e3
    flop_per_s = flops / seconds if seconds > 0 else math.nan
    executed_per_s = flops_executed / seconds if seconds > 0 else math.nan
    return {**row, "flops": flops, "flops_executed": flops_executed, "flop_per_s": flop_per_s,
            "gemm_flop_per_s": gemm_flop_per_s, "pct_of_gemm": 100 * flop_per_s / gemm_flop_per_s,
            "pct_of_gemm_executed": 100 * executed_per_s / gemm_flop_per_s}  # fmt: skip


def cell_bytes(cell: Cell) -> tuple[float, float]:
    """(useful, executed) bytes of q, k, v and the output: on the real lengths, and as the padded batch holds them.

    They differ only for ragged batches (sweep.lengths), whose sequences are counted at their own lengths.
    """
    p = cell.problem
    per_position = p.torch_dtype.itemsize * p.head_dim * (2 * p.q_heads + 2 * p.kv_heads)  # q and out; k and v
    executed = float(p.batch * p.q_len * per_position)
    return (float(sum(p.kv_valid_lens) * per_position) if cell.lengths else executed), executed
