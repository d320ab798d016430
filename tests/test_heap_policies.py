"""The heap policies measurements run on (bench/core/memory.py): timed calls on a resident heap never
page-fault, on a mapped one they fault in every large block, peaks are taken with large blocks mapped,
and the bench worker runs without glibc's thread cache (which would pin a resident heap's free chunks)."""

import multiprocessing
import os
import resource
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from bench.core.memory import (
    NO_THREAD_CACHE,
    map_large_blocks,
    measure_peak,
    timing_heap,
    without_thread_cache,
)
from bench.sweep.worker import Worker

BLOCK_FLOATS = 2**21  # 8 MiB: 2048 pages


def _faults_per_call(calls: int = 5) -> float:
    """The median page faults of a call that writes and reads a fresh 8 MiB block, after one call that grows the
    heap. The median, as the sweep reports: on a resident heap the first call after that one sometimes faults
    the whole block again (1 process in 12 here, and one CI run), the rest none."""

    def faults() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        float(torch.ones(BLOCK_FLOATS).sum())
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults()  # the policy's first call grows the heap
    return statistics.median(faults() for _ in range(calls))


def _faults_per_call_on_each_policy() -> tuple[float, float]:
    map_large_blocks()
    with timing_heap("mapped"):
        mapped = _faults_per_call()
    with timing_heap("resident"):
        resident = _faults_per_call()
    return mapped, resident


def test_resident_calls_reuse_faulted_pages_and_mapped_ones_fault_every_page():
    # in a fresh process started as the worker is: chunks that earlier tests left free in this process's
    # heap would serve the mapped calls' blocks without a fault
    with without_thread_cache(), ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        mapped, resident = pool.submit(_faults_per_call_on_each_policy).result()
    pages = BLOCK_FLOATS * 4 // resource.getpagesize()
    assert mapped > 0.9 * pages, mapped
    assert resident < 0.05 * pages, resident


def test_a_peak_after_resident_timing_sees_the_call_s_own_block():
    map_large_blocks()
    with timing_heap("resident"):
        _faults_per_call()
    peak, _ = measure_peak("cpu", lambda: torch.ones(BLOCK_FLOATS).sum())
    assert abs(peak - BLOCK_FLOATS * 4) < 2**20, peak  # page-rounded; what a trim leaves resident


def test_an_unknown_timing_heap_is_refused():
    with pytest.raises(ValueError, match="'cached' is not one of resident, mapped"), timing_heap("cached"):
        pass


@pytest.mark.parametrize("before", [None, "glibc.malloc.arena_max=2"])
def test_without_thread_cache_adds_the_tunable_and_restores_the_environment(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    else:
        monkeypatch.setenv("GLIBC_TUNABLES", before)
    with without_thread_cache():
        assert os.environ["GLIBC_TUNABLES"].split(":") == [*([before] if before else []), NO_THREAD_CACHE]
    assert os.environ.get("GLIBC_TUNABLES") == before


def test_the_bench_worker_runs_without_the_thread_cache():
    with Worker(threads=1, imports=[], memory_limit_bytes=2**33) as worker:
        worker._start()
        environment = Path(f"/proc/{worker._process.pid}/environ").read_bytes().decode().split("\0")
    tunables = [line for line in environment if line.startswith("GLIBC_TUNABLES=")]
    assert len(tunables) == 1 and NO_THREAD_CACHE in tunables[0].split("=", 1)[1].split(":"), tunables
