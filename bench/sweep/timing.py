"""Timers that keep raw samples: perf_counter on CPU, CUDA events with an L2 flush on GPU.

Both take the same two callables: `prepare()` runs untimed before every sample (e.g. the forward
pass whose backward is timed) and returns the state `run(state)` needs; only `run` is timed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.core.memory import timing_heap

NOISY_IQR_OVER_MEDIAN = 0.10  # torch.utils.benchmark warns above the same ratio
L2_FLUSH_BYTES = 256 * 2**20  # bigger than any GPU's L2 (H100: 50 MB), as in triton.testing.do_bench
ESTIMATE_CALLS = 5  # flushed calls that estimate one call's time, as in do_bench

Prepare = Callable[[], Any]
Run = Callable[[Any], Any]


@dataclass(frozen=True)
class Samples:
    """Raw timings of one cell in milliseconds, and the statistics taken from them."""

    ms: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.ms))

    @property
    def iqr(self) -> float:
        q1, q3 = np.percentile(self.ms, [25, 75])
        return float(q3 - q1)

    @property
    def min(self) -> float:
        return min(self.ms)

    @property
    def noisy(self) -> bool:
        return self.iqr / self.median > NOISY_IQR_OVER_MEDIAN


def measured_columns(setup_ms: float, samples: Samples, peak_bytes: int, kernel: str) -> dict[str, Any]:
    """The columns every measured cell's row has: setup, the timing statistics and raw samples, peak memory."""
    return {
        "status": "ok",
        "reason": "",
        "setup_ms": setup_ms,
        "time_ms_median": samples.median,
        "time_ms_iqr": samples.iqr,
        "time_ms_min": samples.min,
        "time_ms_samples": list(samples.ms),
        "n_samples": len(samples.ms),
        "noisy": samples.noisy,
        "peak_bytes": peak_bytes,
        "kernel": kernel,
    }


def _enough(count: int, started: float, min_samples: int, max_samples: int, budget_s: float) -> bool:
    return count >= max_samples or (count >= min_samples and time.perf_counter() - started >= budget_s)


def time_cpu(prepare: Prepare, run: Run, min_samples: int, max_samples: int, budget_s: float) -> Samples:
    """One perf_counter interval per call; sampling stops after budget_s once min_samples are taken."""
    samples: list[float] = []
    started = time.perf_counter()
    while not _enough(len(samples), started, min_samples, max_samples, budget_s):
        state = prepare()
        begin = time.perf_counter()
        run(state)
        samples.append((time.perf_counter() - begin) * 1e3)
    return Samples(tuple(samples))


def time_cuda(prepare: Prepare, run: Run, min_samples: int, max_samples: int, budget_s: float) -> Samples:
    """CUDA events around each call, the L2 cache flushed before each (as triton.testing.do_bench).

    Runs on the current CUDA device (the caller wraps a cell in `on_device`); checked on a GPU by
    `pytest -m cuda` and scripts/gpu_check.sh, never on the CPU-only CI machine.
    The number of samples comes from ESTIMATE_CALLS flushed calls, as do_bench estimates it, so that
    sampling (each sample's prepare and flush included) fits budget_s.
    """
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    estimate_start, estimate_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    estimate_start.record()
    for _ in range(ESTIMATE_CALLS):
        state = prepare()
        flush.zero_()
        run(state)
    estimate_end.record()
    torch.cuda.synchronize()
    estimate_s = max(estimate_start.elapsed_time(estimate_end) / 1e3 / ESTIMATE_CALLS, 1e-6)
    count = max(min_samples, min(max_samples, int(budget_s / estimate_s)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    for start, end in zip(starts, ends, strict=False):
        state = prepare()
        flush.zero_()  # evict the inputs from L2 so each call reads them from HBM, as in real use
        start.record()
        run(state)
        end.record()
    torch.cuda.synchronize()
    return Samples(tuple(start.elapsed_time(end) for start, end in zip(starts, ends, strict=False)))


def timed_samples(device_type: str, timing: dict[str, Any], prepare: Prepare, run: Run) -> Samples:
    """A cell's samples under its timing config, on the heap `timing["heap"]` names (bench/core/memory.py),
    after one untimed call there (it faults in the heap the calls reuse)."""
    with timing_heap(timing["heap"]):
        run(prepare())
        synchronize(device_type)
        return timer_for(device_type)(prepare, run, timing["min_samples"], timing["max_samples"], timing["budget_s"])


def timer_for(device_type: str) -> Callable[..., Samples]:
    """The timer for a device type: time_cuda on "cuda", time_cpu otherwise."""
    return time_cuda if device_type == "cuda" else time_cpu


def on_device(device: str) -> contextlib.AbstractContextManager:
    """Make a CUDA device (cuda:1) current for what runs inside: flush buffer, events, memory stats, launches."""
    return torch.cuda.device(device) if device.startswith("cuda") else contextlib.nullcontext()


def synchronize(device_type: str) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers it (no-op on CPU)."""
    if device_type == "cuda":
        torch.cuda.synchronize()
