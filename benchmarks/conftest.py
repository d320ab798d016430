"""pytest set-up of the regression suite: its thread count, plugin modules to import, what the JSON records."""

import contextlib
import importlib

import torch

from bench.locks import TIMING_LOCK, timing_lock
from bench.regression_suite import ROUNDS, THREADS

_held = contextlib.ExitStack()


def pytest_addoption(parser):
    parser.addoption(
        "--zoo-import",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module that registers (or replaces) attention entries before the suite is collected",
    )
    parser.addoption("--rounds", type=int, default=ROUNDS, help=f"timed rounds per cell (default {ROUNDS})")


def pytest_configure(config):
    torch.set_num_threads(THREADS)
    for module in config.getoption("--zoo-import"):
        importlib.import_module(module)
    _held.enter_context(timing_lock(TIMING_LOCK))  # `python -m bench` jobs on this machine wait, and we for them


def pytest_unconfigure(config):
    _held.close()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads())
