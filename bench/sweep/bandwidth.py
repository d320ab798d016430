"""The machine's memory-bandwidth ceiling, measured at the start of a run like the GEMM ceiling.

Decode steps are memory-bound: their figure to judge against is bytes per second, not FLOP/s. The
ceiling is the best of a multi-threaded copy (dst.copy_(src): 2 bytes moved per byte copied) and a
read (src.sum(): every byte read once) of BANDWIDTH_BYTES, far past any last-level cache (these VMs
misreport theirs: 480 MB in /proc/cpuinfo on one host), device-to-device on CUDA.
"""

from __future__ import annotations

import torch

from bench.sweep.timing import on_device, timer_for

BANDWIDTH_BYTES = 2**30  # the copy's source (and destination): 1 GiB each, 2 GiB moved per copy
BANDWIDTH_SAMPLES = (5, 20, 1.0)  # min samples, max samples, sampling budget (s), per kernel


def measure_bandwidth_bytes_per_s(device: str) -> dict[str, float]:
    """bandwidth_bytes_per_s (the ceiling: the faster of copy and read) and the two figures it came from."""
    device_type = device.split(":")[0]
    with on_device(device):
        source = torch.ones(BANDWIDTH_BYTES // 4, dtype=torch.float32, device=device)
        destination = torch.empty_like(source)
        timer = timer_for(device_type)
        copy = timer(lambda: None, lambda _: destination.copy_(source), *BANDWIDTH_SAMPLES)
        read = timer(lambda: None, lambda _: source.sum(), *BANDWIDTH_SAMPLES)
    copy_rate, read_rate = 2 * BANDWIDTH_BYTES / (copy.median / 1e3), BANDWIDTH_BYTES / (read.median / 1e3)
    return {
        "bandwidth_bytes_per_s": max(copy_rate, read_rate),
        "copy_bytes_per_s": copy_rate,
        "read_bytes_per_s": read_rate,
    }
