"""Measure one cell, top to bottom: build, warm up, peak memory, error, time (and a recall cell's training run).
Runs inside the worker, whose heap maps large blocks except while timed calls run (bench/core/memory.py)."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import attention_zoo
from attention_zoo import Problem
from attention_zoo.inputs import Inputs, draw_inputs
from bench.core.calls import mode_calls
from bench.core.cell import Cell
from bench.core.memory import measure_peak
from bench.sweep.accuracy import error_vs_exact
from bench.sweep.decode import measure_decode
from bench.sweep.timing import measured_columns, on_device, synchronize, timed_samples
from bench.tasks.train import train_recall

_INPUTS: dict[tuple, Inputs] = {}  # see cell_inputs


def cell_inputs(problem: Problem, seed: int, requires_grad: bool, distribution: str = "iid") -> Inputs:
    """Fresh copies of the problem's inputs, drawn once per problem and distribution (drawn in float64 on the
    host: seconds at N = 16k); cells run problem by problem, so the latest problem's are kept, on its device."""
    key = (problem, seed) if distribution == "iid" else (problem, seed, distribution)
    if key not in _INPUTS:
        _INPUTS.clear()  # the previous problem's go before this one's are drawn
        _INPUTS[key] = draw_inputs(problem, distribution, seed)
    drawn = _INPUTS[key]
    q, k, v = (x.clone().requires_grad_(requires_grad) for x in drawn)
    return Inputs(q, k, v, drawn.needles)


def measure_cell(cell: Cell, timing: dict[str, Any], seed: int) -> dict[str, Any]:
    """The measured columns of one cell's row; an exception propagates to the worker, which records it."""
    with on_device(cell.problem.device):  # cuda:1: flush, events, memory stats and launches on that GPU
        if cell.mode == "decode":
            return measure_decode(cell, timing, cell_inputs(cell.problem, seed, False, cell.inputs))
        if cell.mode == "recall":  # the entry's fwd_bwd at the model's shape, then the training run
            timed = _measure_on_device(dataclasses.replace(cell, mode="fwd_bwd", task=None), timing, seed)
            return {**timed, **train_recall(cell.impl, cell.hparams, cell.problem, cell.task, seed)}
        return _measure_on_device(cell, timing, seed)


def _measure_on_device(cell: Cell, timing: dict[str, Any], seed: int) -> dict[str, Any]:
    problem, device_type = cell.problem, cell.problem.device_type
    inputs = cell_inputs(problem, seed, cell.mode != "fwd", cell.inputs)
    q, k, v = inputs.q, inputs.k, inputs.v  # q (B,Hq,Nq,D); k, v (B,Hkv,Nk,D)

    # setup: build (projections, masks, compiled code) and warm up, timed together as setup_ms
    started = time.perf_counter()
    impl = attention_zoo.get(cell.impl).build(problem, **cell.hparams)
    prepare, run = mode_calls(impl, q, k, v, cell.mode)
    calls = 0
    while calls < timing["warmup_calls"] or time.perf_counter() - started < timing["warmup_s"]:
        run(prepare())
        calls += 1
    synchronize(device_type)
    setup_ms = (time.perf_counter() - started) * 1e3

    # peak memory of one more call, large blocks mapped (bench/core/memory.py); its forward output gives the error
    peak_bytes, out = measure_peak(device_type, functools.partial(run, prepare()))
    error = error_vs_exact(problem, out, inputs)
    del out  # nothing of this call stays for the timed ones

    # timed repetitions on the timing heap: raw samples kept, statistics from them
    samples = timed_samples(device_type, timing, prepare, run)
    return {**measured_columns(setup_ms, samples, peak_bytes, impl.kernel), **error}
