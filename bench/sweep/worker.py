"""The worker process that measures cells, and the runner's handle on it, which watches time and memory.

A cell can crash, hang or exhaust memory; then only the worker dies, the runner records why
(`error`, `timeout`, `oom`) and starts a fresh worker for the next cell. A worker that dies between
cells is started again before the next one. After a fatal CUDA error (the context is unusable) the
worker replies and exits, so the next cell gets a fresh one. The worker ignores SIGINT: Ctrl-C is the
runner's to handle (it stops the worker).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from bench.command_line import described
from bench.core.cell import unsupported_reason
from bench.core.memory import map_large_blocks, status_bytes, without_thread_cache
from bench.sweep.bandwidth import measure_bandwidth_bytes_per_s
from bench.sweep.environment import device_environment
from bench.sweep.flops import measure_gemm_flop_per_s
from bench.sweep.measure import measure_cell

PR_SET_PDEATHSIG = 1  # from linux/prctl.h
REASON_CHARS = 300  # an error row's reason: the error's type and first line, cut to this
POLL_S = 0.05  # how often the runner checks the worker's memory, liveness and deadline
STARTUP_TIMEOUT_S = 300
EXIT_GRACE_S = 10  # at the end of a run the worker may exit by itself, letting compile workers clean up
# every task that touches a device runs here, so the runner process never creates a CUDA context
TASKS = {
    "cell": measure_cell,
    "gemm": measure_gemm_flop_per_s,
    "bandwidth": measure_bandwidth_bytes_per_s,
    "device": device_environment,
    "reason": unsupported_reason,
}
OUT_OF_MEMORY_TEXT = ("out of memory", "can't allocate memory")
FATAL_CUDA_TEXT = ("CUDA error", "device-side assert")  # the CUDA context is unusable after these
START_ATTEMPTS = 2  # a worker killed while starting is started once more
OOM_EVIDENCE_FRACTION = 0.9  # a SIGKILL is the OOM killer's when RSS had reached this fraction of the limit
CGROUP_EVENTS = Path("/sys/fs/cgroup/memory.events")  # cgroup v2: oom_kill counts the kernel's OOM kills


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when the runner dies, so no orphan keeps computing."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the runner died before prctl took effect
        os._exit(1)


def _is_fatal_cuda_error(error: BaseException, text: str) -> bool:
    return isinstance(error, torch.AcceleratorError) or any(s in text for s in FATAL_CUDA_TEXT)


def _kernel_oom_kills() -> int | None:
    """The kernel's count of OOM kills in this cgroup, or None where it does not say."""
    try:
        events = dict(line.split() for line in CGROUP_EVENTS.read_text().splitlines())
        return int(events["oom_kill"])
    except (OSError, KeyError, ValueError):
        return None


def serve(conn: Connection, parent_pid: int, threads: int, imports: list[str]) -> None:
    """The worker's loop: receive (task, args), reply ("ok", value) or (status, reason) until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the runner while it started us
    _die_with_parent(parent_pid)
    # a SIGTERM sent to the whole job (SLURM's scancel and time limit, a kill of the process group) is the
    # runner's to handle: dying of it first would make the runner record the cell in flight as failed
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    map_large_blocks()  # peaks are measured so; timed calls switch to their timing heap (bench/core/memory.py)
    for module in imports:
        importlib.import_module(module)
    conn.send(("ready", None))
    while True:
        try:
            task, args = conn.recv()
        except EOFError:
            return
        fatal = False
        try:
            reply = ("ok", TASKS[task](*args))
        except Exception as error:
            text = described(error)[:REASON_CHARS]
            out_of_memory = isinstance(error, torch.OutOfMemoryError) or any(s in text for s in OUT_OF_MEMORY_TEXT)
            fatal = not out_of_memory and _is_fatal_cuda_error(error, text)
            reply = ("oom" if out_of_memory else "error", text)
            if out_of_memory and torch.cuda.is_initialized():
                torch.cuda.empty_cache()  # what the failed cell cached would shrink the next cell's memory
        conn.send(reply)
        if fatal:
            conn.close()
            os._exit(0)  # a fresh process is the only way to a working CUDA context


class Worker:
    """The runner's handle: runs a task in the worker under a deadline and an RSS limit, restarting it after a death."""

    def __init__(self, threads: int, imports: list[str], memory_limit_bytes: int) -> None:
        self.threads, self.imports, self.memory_limit_bytes = threads, imports, memory_limit_bytes
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(grace_s=EXIT_GRACE_S if exc_type is None else 0.0)  # interrupted: stop it now

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads or locks
        for _ in range(START_ATTEMPTS):
            self._conn, child_conn = context.Pipe()
            # not a daemon: torch.compile starts compile workers, which daemons may not
            self._process = context.Process(
                target=serve, args=(child_conn, os.getpid(), self.threads, self.imports), name="bench-worker"
            )
            # SIGINT blocked while it starts: the new interpreter inherits the mask, so a Ctrl-C while it imports
            # torch stays pending there until serve() ignores it (no traceback); here it stays pending until the
            # mask is lifted and then interrupts the runner (ignoring it here instead would lose a Ctrl-C that lands
            # while a worker starts, as one did between two cells)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                with without_thread_cache():  # it switches heap policies (bench/core/memory.py)
                    self._process.start()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            child_conn.close()
            # importing torch takes seconds: wait here, so that start-up never counts against a cell's deadline
            try:
                if self._conn.poll(STARTUP_TIMEOUT_S) and self._conn.recv()[0] == "ready":
                    return
            except EOFError:  # it died while starting (its traceback, if any, is on stderr)
                pass
            self.close()
        raise RuntimeError(f"the bench worker did not start ({START_ATTEMPTS} attempts, {STARTUP_TIMEOUT_S} s each)")

    def close(self, grace_s: float = 0.0) -> None:
        """Stop the worker (if any): closing the pipe ends its loop; after grace_s it is killed. Then reap it."""
        if self._process is not None:
            self._conn.close()
            self._process.join(grace_s)
            self._process.kill()
            self._process.join()
            self._process = self._conn = None

    def _death(self, highest_rss: int, oom_kills_before: int | None) -> tuple[str, str]:
        """Why the worker died in a task: its exit code, or the signal that killed it (OOM killer on evidence)."""
        self._process.join()
        code = self._process.exitcode
        self.close()
        if code is None or code >= 0:
            return "error", f"worker exited with code {code}"
        name = signal.Signals(-code).name
        oom_kills = _kernel_oom_kills()
        kernel_record = None not in (oom_kills, oom_kills_before) and oom_kills > oom_kills_before
        if code == -signal.SIGKILL and kernel_record:
            return "oom", "worker killed by the kernel's OOM killer (SIGKILL; the cgroup's oom_kill count rose)"
        if code == -signal.SIGKILL and highest_rss >= OOM_EVIDENCE_FRACTION * self.memory_limit_bytes:
            rss, limit = highest_rss / 2**30, self.memory_limit_bytes / 2**30
            return "oom", f"worker killed by SIGKILL at {rss:.2f} GiB RSS, near the limit {limit:.2f} GiB (OOM killer)"
        return "error", f"worker killed by {name} from outside"

    def _send(self, message: tuple[str, tuple]) -> None:
        """Send a task, first starting the worker again if it died since its last task (between cells)."""
        if self._process is not None and not self._process.is_alive():
            self.close()
        if self._process is None:
            self._start()
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionResetError):  # it died between the check and the send
            self.close()
            self._start()
            self._conn.send(message)

    def call(self, task: str, *args: Any, timeout_s: float) -> tuple[str, Any]:
        """("ok", value), or (status, reason) with status error, oom or timeout; the worker survives or is replaced."""
        self._send((task, args))
        oom_kills_before, highest_rss = _kernel_oom_kills(), 0
        deadline = time.monotonic() + timeout_s
        while True:
            if self._conn.poll(POLL_S):
                try:
                    return self._conn.recv()
                except EOFError:  # the worker died; the pipe reads as closed
                    return self._death(highest_rss, oom_kills_before)
            if not self._process.is_alive():
                return self._death(highest_rss, oom_kills_before)
            try:
                rss = status_bytes("VmRSS", self._process.pid)
            except (FileNotFoundError, KeyError, ProcessLookupError):  # exiting: no status or no memory fields
                continue
            highest_rss = max(highest_rss, rss)
            if rss > self.memory_limit_bytes:
                self.close()
                return (
                    "oom",
                    f"worker RSS {rss / 2**30:.2f} GiB passed the limit {self.memory_limit_bytes / 2**30:.2f} GiB",
                )
            if time.monotonic() > deadline:
                self.close()
                return "timeout", f"no result within cell_timeout_s={timeout_s:g} s"
