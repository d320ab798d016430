"""FLOP counts of a cell (from the entry's declaration) and the machine's GEMM ceiling to compare them with."""

from __future__ import annotations

import torch

import attention_zoo
from attention_zoo import Problem
from bench.cases import Cell
from bench.timing import synchronize, timer_for

REGISTRY_FLOP_MODES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward_backward"}
# square matmul used as the ceiling: big enough for the BLAS to reach its steady state, small enough to take
# about a second on a 2-core CPU
GEMM_SIZE = {"cpu": 2048, "cuda": 4096}
GEMM_SAMPLES = 3


def cell_flops(cell: Cell) -> float:
    """FLOPs of the timed work of one cell, as the entry counts them (2 per multiply-add)."""
    entry = attention_zoo.get(cell.impl)
    return entry.flops(cell.problem, REGISTRY_FLOP_MODES[cell.mode], **cell.hparams)


def cell_flops_executed(cell: Cell) -> float:
    """FLOPs the cell's entry executes, masked or padded work included (equal to cell_flops where it has none)."""
    entry = attention_zoo.get(cell.impl)
    return entry.flops_executed(cell.problem, REGISTRY_FLOP_MODES[cell.mode], **cell.hparams)


def measure_gemm_flop_per_s(device: str, dtype: str) -> float:
    """FLOP/s of a square matmul on the device and dtype: median of GEMM_SAMPLES after a warm-up."""
    problem = Problem(dtype=dtype, device=device)  # validates the pair and maps the dtype name
    size = GEMM_SIZE[problem.device_type]
    a, b = (torch.randn(size, size, device=device).to(problem.torch_dtype) for _ in range(2))
    a @ b
    synchronize(problem.device_type)
    samples = timer_for(problem.device_type)(lambda: None, lambda _: a @ b, GEMM_SAMPLES, GEMM_SAMPLES, budget_s=0.0)
    return 2 * size**3 / (samples.median / 1e3)
