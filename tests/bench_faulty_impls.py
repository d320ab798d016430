"""Test-only entries that misbehave inside the bench worker: exit, get killed, hog memory, hang, break CUDA,
wait at a gate.

Imported by the runner and the worker through the config's `imports`; tests unregister them afterwards.
"""

import os
import signal
import time

import torch

from attention_zoo import Attention, Problem, register


class Misbehaving(Attention):
    """Does `act()` instead of attention."""

    def __init__(self, problem: Problem, act) -> None:
        super().__init__(problem)
        self.act = act

    def forward(self, q, k, v):
        self.act()
        return q


def hog_memory() -> None:
    held = [torch.ones(256 * 2**20, dtype=torch.uint8) for _ in range(24)]  # 6 GiB unless stopped first
    del held


class CudaContext:
    """Stands for the worker's CUDA context: after a fatal CUDA error, nothing runs in it again."""

    broken = False


def fatal_cuda_error() -> None:
    CudaContext.broken = True
    raise torch.AcceleratorError("CUDA error: device-side assert triggered")


def needs_working_cuda_context() -> None:
    if CudaContext.broken:
        raise RuntimeError("CUDA error: this worker's context was broken by an earlier cell")


GATE_ENV = "BENCH_TEST_GATE"


def wait_at_gate() -> None:
    """Wait while the file named by $BENCH_TEST_GATE exists: a test holds a job mid-run, then lets it finish."""
    gate = os.environ.get(GATE_ENV)
    while gate and os.path.exists(gate):
        time.sleep(0.1)


BEHAVIOURS = {
    "_bench_test_exit": lambda: os._exit(3),
    "_bench_test_sigkill": lambda: os.kill(os.getpid(), signal.SIGKILL),
    "_bench_test_sigusr1": lambda: os.kill(os.getpid(), signal.SIGUSR1),
    "_bench_test_cuda_fatal": fatal_cuda_error,
    "_bench_test_needs_cuda": needs_working_cuda_context,
    "_bench_test_hog": hog_memory,
    "_bench_test_hang": lambda: time.sleep(60),
    "_bench_test_gated": wait_at_gate,
}


def _register(name: str, act) -> None:
    def build(problem: Problem) -> Attention:
        return Misbehaving(problem, act)

    register(family="full", exact=True, time="N^2", memory="N", name=name)(build)


for _name, _act in BEHAVIOURS.items():
    _register(_name, _act)
