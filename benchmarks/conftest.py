"""pytest set-up of the regression suite: its clock, heap, thread count, plugin modules, memory pass, and JSON."""

import contextlib
import importlib
from pathlib import Path

import pytest
import torch

import attention_zoo
from bench.check.suite import (
    QUIET_WAIT_BUDGET_S,
    ROUNDS,
    THREADS,
    TIMER,
    QuietGate,
    measure_peak_bytes,
    suite_machine,
)
from bench.core.cell import unsupported_reason
from bench.core.locks import TIMING_LOCK, timing_lock
from bench.core.memory import keep_heap_resident, map_large_blocks

_held = contextlib.ExitStack()
_peak_bytes: dict[str, int | Exception] = {}  # by test id, from the memory pass


def pytest_addoption(parser):
    parser.addoption(
        "--zoo-import",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module that registers (or replaces) attention entries before the suite is collected",
    )
    parser.addoption("--rounds", type=int, default=ROUNDS, help=f"timed rounds per cell (default {ROUNDS})")
    parser.addoption(
        "--quiet-reference-ms",
        type=float,
        metavar="MS",
        help="time each cell only once the reference attention takes about this long (the baseline's median)",
    )
    parser.addoption(
        "--quiet-wait-s",
        type=float,
        default=QUIET_WAIT_BUDGET_S,
        metavar="S",
        help=f"at most this long in all waiting for a quiet machine (default {QUIET_WAIT_BUDGET_S:g})",
    )
    parser.addoption(
        "--no-peaks",
        action="store_true",
        help="skip the memory pass (peaks recorded as null): a run pooled with one that measured them",
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its timer option
def pytest_configure(config):
    for option, allowed in (
        ("--rounds", "a whole number of 1 or more"),
        ("--quiet-reference-ms", "a time in ms > 0"),
        ("--quiet-wait-s", "a time in s >= 0"),
    ):
        value = config.getoption(option)
        if value is not None and (value < 0 if option == "--quiet-wait-s" else value <= 0):
            raise pytest.UsageError(f"{option}={value} is invalid: give {allowed}")
    config.option.benchmark_timer = TIMER
    map_large_blocks()  # from the start, so that the heap holds no large block when the memory pass runs
    torch.set_num_threads(THREADS)
    for module in config.getoption("--zoo-import"):
        importlib.import_module(module)
    _held.enter_context(timing_lock(TIMING_LOCK))  # `python -m bench` jobs on this machine wait, and we for them


def pytest_collection_finish(session):
    """The memory pass over every selected cell that can run here, before any is timed; then the timing heap."""
    if session.config.option.collectonly:
        return
    cells = {item.nodeid: item.callspec.params["cell"] for item in session.items}
    runnable = {nodeid: cell for nodeid, cell in cells.items() if not unsupported_reason(cell)}
    if session.config.getoption("--no-peaks"):
        _peak_bytes.update(dict.fromkeys(runnable))
        print(f"\nregression suite: timing of {len(runnable)} cells (no memory pass)", flush=True)
        keep_heap_resident()
        return
    print(f"\nregression suite: peak memory of {len(runnable)} cells, then their timing", flush=True)
    for nodeid, cell in runnable.items():
        try:
            _peak_bytes[nodeid] = measure_peak_bytes(cell)
        except Exception as error:  # the cell's own test fails with it; the other cells go on
            _peak_bytes[nodeid] = error
    keep_heap_resident()


@pytest.fixture
def peak_bytes(request):
    """The cell's peak bytes from the memory pass (its error, if it failed there; None without the pass)."""
    peak = _peak_bytes[request.node.nodeid]
    if isinstance(peak, Exception):
        raise peak
    return peak


@pytest.fixture(scope="session")
def quiet_gate(request):
    """The run's quiet gate (one wait budget for all cells), or None when no baseline time was given."""
    quiet_ms = request.config.getoption("--quiet-reference-ms")
    return QuietGate(quiet_ms, budget_s=request.config.getoption("--quiet-wait-s")) if quiet_ms else None


def pytest_unconfigure(config):
    _held.close()


def pytest_benchmark_update_machine_info(config, machine_info):
    """The host (compared before a baseline is), where attention_zoo came from (the A/B's side), and -k."""
    machine_info.update(
        suite_machine(),
        torch_threads=torch.get_num_threads(),
        zoo_path=str(Path(attention_zoo.__file__).parent),
        select=config.getoption("keyword"),
    )
