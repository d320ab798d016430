"""The regression suite's cells and how each is measured: every entry at small sizes, forward and backward.

Run by pytest-benchmark (benchmarks/test_regression.py) and compared by `python -m bench.check`.
Raw milliseconds do not survive a change of machine or a busy neighbour, so every timed round is
preceded by a fixed-size reference attention timed the same way: a round's time divided by its own
reference is a ratio that load and clock changes move far less than either time. The sizes are small
enough for the suite to take a few minutes on 2 cores and cover enough N (four doublings) to fit time
and memory exponents; the hyperparameters are small so that the linear entries are in their linear
regime at these N.

Two passes in one process, because the heap's state decides what each measures (bench/core/memory.py):
first the peak memory of every cell, while large blocks are mapped fresh and the heap has never
held one (so VmHWM is the peak of what the call holds); then the timing of every cell, on a heap
that keeps its pages (so timed calls reuse buffers already faulted in).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import attention_zoo
from attention_zoo import Problem
from bench.core.calls import mode_calls
from bench.core.cell import Cell
from bench.core.memory import measure_peak

SEQ_LENS = (256, 512, 1024, 2048)
SUITE_MODES = ("fwd", "bwd")
HEADS, HEAD_DIM = 4, 64
# by hyperparameter name, for every entry that has it: windows, ranks and segments well below the N swept
HPARAMS = {
    "window": 32,
    "global_tokens": 8,
    "proj_len": 32,
    "num_features": 32,
    "causal_chunk": 64,
    "segment_len": 64,
    "mem_len": 64,
    "q_tile": 128,
    "k_tile": 256,
}
ROUNDS, WARMUP_ROUNDS = 15, 2
# One thread: a parallel region waits for its slowest thread, so on a shared machine one descheduled
# thread stretches a 2 ms call to a scheduler time slice (observed: 1.3 ms -> 12-16 ms) and the ratios
# swing by 5x. A single thread is slowed by load only in proportion, in the entry and its reference alike.
THREADS = 1
# Thread CPU time, not wall time: with one thread the call's work is all on this thread, and time the
# thread spends descheduled (a neighbour on its core, the hypervisor) is not the entry's.
TIMER = "time.thread_time"
# What a run's figures mean, recorded in its JSON: runs measured another way are not compared.
METHOD = (
    "thread CPU time / reference before each round, 1 thread, resident heap, quiet gate; "
    "peaks first, large blocks mapped"
)
REFERENCE_LEN = 512  # the reference attention's sequence length: a few ms on one core
SEED = 0
# The machine counts as quiet while the reference takes at most this times its baseline time: the
# reference's median moved by +-5% between quiet runs, and by +9% with a neighbour streaming memory.
QUIET_MARGIN = 1.10
QUIET_PROBES = 5  # reference calls whose median is compared
QUIET_POLL_S = 1.0
QUIET_WAIT_BUDGET_S = 45.0  # per run: then cells are timed however busy the machine is


def suite_hparams(impl: str) -> dict[str, Any]:
    """The entry's hyperparameters in the suite: its defaults, with the suite's small sizes where it has them
    and, over those, the sizes the entry declares for the suite (register(suite_hparams=...)).

    Only `Entry.hparams` and `Entry.suite_hparams` are used (the zoo API the base side of an A/B is driven
    through, README); a base commit older than suite_hparams has none.
    """
    entry = attention_zoo.get(impl)
    defaults = entry.hparams
    sizes = {key: value for key, value in HPARAMS.items() if key in defaults}
    return {**defaults, **sizes, **getattr(entry, "suite_hparams", {})}


def suite_machine() -> dict[str, Any]:
    """What a suite run records about this host beside pytest-benchmark's CPU and Python (machine_info).

    Runs are compared with a committed baseline only when these and the CPU are the same (bench/check/runs.py).
    """
    return {
        "torch_version": torch.__version__,
        "torch_threads": THREADS,
        "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
        "suite_method": METHOD,
    }


def _problem(impl: str, seq_len: int) -> Problem:
    """Non-causal self-attention, or causal for entries that only do causal (Transformer-XL)."""
    entry = attention_zoo.get(impl)
    problems = [Problem(batch=1, q_heads=HEADS, q_len=seq_len, head_dim=HEAD_DIM, causal=c) for c in (False, True)]
    return next((p for p in problems if not entry.unsupported_reason(p)), problems[0])


def suite_cells() -> list[Cell]:
    """Every registered entry x SEQ_LENS x SUITE_MODES, whether or not it can run here (the test skips with the reason).

    Ordered N first, entries innermost: an entry's four N are measured minutes apart, so a burst of
    load on the machine lands on one of them, not on all (the check compares the median over N).
    """
    return [
        Cell(impl=impl, problem=_problem(impl, n), mode=mode, hparams=suite_hparams(impl), padding=0.0)
        for n in SEQ_LENS
        for mode in SUITE_MODES
        for impl in attention_zoo.list_impls()
    ]


def cell_name(cell: Cell) -> str:
    return f"{cell.impl}-{cell.mode}-N{cell.problem.q_len}"


def _reference() -> Any:
    """A callable timing the reference once, in milliseconds: a fixed unfused attention in plain torch ops.

    Two GEMMs and a softmax over a 4 MB score matrix, so it is slowed like the entries are, by
    compute (a neighbour's busy core) and by memory traffic (a neighbour's cache and bandwidth use);
    a GEMM alone tracked only the first, and ratios to it drifted by +-10-25% per entry between runs.
    It uses no registered entry, so a regression in one cannot hide in the reference.
    """
    generator = torch.Generator().manual_seed(SEED)
    q, k, v = (torch.randn(HEADS, REFERENCE_LEN, HEAD_DIM, generator=generator) for _ in range(3))

    def timed() -> float:
        begin = time.thread_time()
        torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return (time.thread_time() - begin) * 1e3

    return timed


@dataclass
class QuietGate:
    """Holds each cell's timing back while the machine is busier than when the baseline was measured.

    A neighbour on this shared VM can slow everything for tens of seconds (the reference ran 25-45%
    slow through a whole 20 s run, never once at its usual time), and entries are slowed by
    different factors, so the ratio does not cancel it all: sliding_window read +18% at every N, and
    with a process streaming memory on the other core the efficient entries' forward passes read
    +10-12% (raw times +16-26%). The gate times the reference before each cell and waits while it is
    over QUIET_MARGIN x `quiet_ms` (the baseline's median); a run waits at most `budget_s` in all,
    then times the rest as it finds them.
    """

    quiet_ms: float
    budget_s: float = QUIET_WAIT_BUDGET_S

    def wait(self, reference: Callable[[], float]) -> float:
        """Seconds waited for the machine to be quiet (0 when it already was, or the budget is spent)."""
        waited = 0.0
        while self.budget_s > 0 and statistics.median(reference() for _ in range(QUIET_PROBES)) > (
            QUIET_MARGIN * self.quiet_ms
        ):
            time.sleep(QUIET_POLL_S)
            waited += QUIET_POLL_S
            self.budget_s -= QUIET_POLL_S
        return waited


def _calls(cell: Cell) -> tuple[Any, Any]:
    """The cell's (prepare, run) on its inputs, built outside any measurement."""
    q, k, v = cell.problem.make_inputs(seed=SEED, requires_grad=cell.mode != "fwd")
    impl = attention_zoo.get(cell.impl).build(cell.problem, **cell.hparams)
    return mode_calls(impl, q, k, v, cell.mode)


def measure_peak_bytes(cell: Cell) -> int:
    """Peak bytes of one call after WARMUP_ROUNDS (first-call caches are not the entry's working memory)."""
    prepare, run = _calls(cell)
    for _ in range(WARMUP_ROUNDS):
        run(prepare())
    state = prepare()
    peak_bytes, _ = measure_peak(cell.problem.device_type, lambda: run(state))
    return peak_bytes


def measure(benchmark: Any, cell: Cell, peak_bytes: int, gate: QuietGate | None, rounds: int = ROUNDS) -> None:
    """Time the cell with pytest-benchmark (once the gate lets it), the reference before every round.

    What the comparison needs beside the times goes into extra_info.
    """
    prepare, run = _calls(cell)
    reference = _reference()
    waited_s = gate.wait(reference) if gate else 0.0
    reference_ms: list[float] = []

    def setup() -> tuple[tuple[Any], dict]:
        reference_ms.append(reference())
        return (prepare(),), {}

    benchmark.group = cell.impl
    benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=WARMUP_ROUNDS)
    entry = attention_zoo.get(cell.impl)
    benchmark.extra_info.update(
        impl=cell.impl,
        mode=cell.mode,
        seq_len=cell.problem.q_len,
        causal=cell.problem.causal,
        hparams=dict(cell.hparams),
        declared_time_exponent=entry.time.exponent,
        declared_memory_exponent=entry.memory.exponent,
        declared_time_complexity=entry.time.expr,
        declared_memory_complexity=entry.memory.expr,
        reference_ms=reference_ms[-rounds:],  # the warm-up rounds' references come first
        peak_bytes=peak_bytes,
        waited_s=waited_s,
    )
