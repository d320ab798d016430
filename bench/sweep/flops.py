"""FLOP counts of a cell (from the entry's declaration) and the machine's GEMM ceiling to compare them with."""

from __future__ import annotations

import dataclasses
import time

import torch

import attention_zoo
from attention_zoo import Problem
from bench.core.cell import Cell
from bench.sweep.timing import on_device, synchronize, timer_for

REGISTRY_FLOP_MODES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward_backward"}
# The square matmul used as the ceiling. CPU: big enough for the BLAS to reach its steady state, small
# enough to take about a second on 2 cores. CUDA: 8192 (or the largest power of two whose operands fit
# in a quarter of the free memory), warmed up for WARMUP_S (do_bench's 25 ms and more: the SM clock
# rises from idle first), then at least 10 flushed samples, as do_bench takes.
GEMM_SIZE = {"cpu": 2048, "cuda": 8192}
GEMM_SAMPLES = {"cpu": (3, 3, 0.0), "cuda": (10, 100, 0.1)}  # min samples, max samples, sampling budget (s)
GEMM_WARMUP_S = {"cpu": 0.0, "cuda": 0.1}


def cell_flops(cell: Cell) -> float:
    """FLOPs of the timed work of one cell, as the entry counts them (2 per multiply-add)."""
    entry = attention_zoo.get(cell.impl)
    # counted for the same problem on the host: FLOPs do not depend on the device, and the runner that
    # counts them must not touch the GPU (flex's count builds its masks on the problem's device)
    problem = dataclasses.replace(cell.problem, device="cpu")
    return entry.flops(problem, REGISTRY_FLOP_MODES[cell.mode], **cell.hparams)


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
    entry = attention_zoo.get(cell.impl)
    return entry.flops_executed(cell.problem, REGISTRY_FLOP_MODES[cell.mode], **cell.hparams)


def measure_gemm_flop_per_s(device: str, dtype: str) -> float:
    """FLOP/s of a square matmul on the device and dtype: the median of flushed samples after a warm-up."""
    problem = Problem(dtype=dtype, device=device)  # validates the pair and maps the dtype name
    device_type, size = problem.device_type, gemm_size(device)
    with on_device(device):
        a, b = (torch.randn(size, size, device=device).to(problem.torch_dtype) for _ in range(2))
        started = time.perf_counter()
        a @ b
        synchronize(device_type)
        while time.perf_counter() - started < GEMM_WARMUP_S[device_type]:
            a @ b
            synchronize(device_type)
        samples = timer_for(device_type)(lambda: None, lambda _: a @ b, *GEMM_SAMPLES[device_type])
    return 2 * size**3 / (samples.median / 1e3)
