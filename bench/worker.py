"""The worker process that measures cells, and the runner's handle on it, which watches time and memory.

A cell can crash, hang or exhaust memory; then only the worker dies, the runner records why
(`error`, `timeout`, `oom`) and starts a fresh worker for the next cell.
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
from typing import Any

import torch

from bench.flops import measure_gemm_flop_per_s
from bench.measure import measure_cell
from bench.memory import status_bytes

PR_SET_PDEATHSIG = 1  # from linux/prctl.h
POLL_S = 0.05  # how often the runner checks the worker's memory, liveness and deadline
STARTUP_TIMEOUT_S = 300
EXIT_GRACE_S = 10  # at the end of a run the worker may exit by itself, letting compile workers clean up
TASKS = {"cell": measure_cell, "gemm": measure_gemm_flop_per_s}
OUT_OF_MEMORY_TEXT = ("out of memory", "can't allocate memory")


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, short enough for a results column."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when the runner dies, so no orphan keeps computing."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the runner died before prctl took effect
        os._exit(1)


def serve(conn: Connection, parent_pid: int, threads: int, imports: list[str]) -> None:
    """The worker's loop: receive (task, args), reply ("ok", value) or (status, reason) until the pipe closes."""
    _die_with_parent(parent_pid)
    # a SIGTERM sent to the whole job (SLURM's scancel and time limit, a kill of the process group) is the
    # runner's to handle: dying of it first would make the runner record the cell in flight as failed
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    for module in imports:
        importlib.import_module(module)
    conn.send(("ready", None))
    while True:
        try:
            task, args = conn.recv()
        except EOFError:
            return
        try:
            reply = ("ok", TASKS[task](*args))
        except Exception as error:
            text = one_line(error)
            out_of_memory = isinstance(error, torch.OutOfMemoryError) or any(s in text for s in OUT_OF_MEMORY_TEXT)
            reply = ("oom" if out_of_memory else "error", text)
        conn.send(reply)


class Worker:
    """The runner's handle: runs a task in the worker under a deadline and an RSS limit, restarting it after a death."""

    def __init__(self, threads: int, imports: list[str], memory_limit_bytes: int) -> None:
        self.threads, self.imports, self.memory_limit_bytes = threads, imports, memory_limit_bytes
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(grace_s=EXIT_GRACE_S)

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads or locks
        self._conn, child_conn = context.Pipe()
        # not a daemon: torch.compile starts compile workers, which daemons may not
        self._process = context.Process(
            target=serve, args=(child_conn, os.getpid(), self.threads, self.imports), name="bench-worker"
        )
        self._process.start()
        child_conn.close()
        # importing torch takes seconds: wait here, so that start-up never counts against a cell's deadline
        try:
            ready = self._conn.poll(STARTUP_TIMEOUT_S) and self._conn.recv()[0] == "ready"
        except EOFError:  # it died while importing (its traceback is on stderr)
            ready = False
        if not ready:
            self.close()
            raise RuntimeError(f"the bench worker did not start (waited up to {STARTUP_TIMEOUT_S} s)")

    def close(self, grace_s: float = 0.0) -> None:
        """Stop the worker (if any): closing the pipe ends its loop; after grace_s it is killed. Then reap it."""
        if self._process is not None:
            self._conn.close()
            self._process.join(grace_s)
            self._process.kill()
            self._process.join()
            self._process = self._conn = None

    def _death(self) -> tuple[str, str]:
        """Why the worker is gone: SIGKILL from outside is the kernel's OOM killer, anything else an error."""
        self._process.join()
        code = self._process.exitcode
        self.close()
        if code == -signal.SIGKILL:
            return "oom", "worker killed by SIGKILL from outside (the kernel's OOM killer)"
        if code is not None and code < 0:
            return "error", f"worker killed by signal {signal.Signals(-code).name}"
        return "error", f"worker exited with code {code}"

    def call(self, task: str, *args: Any, timeout_s: float) -> tuple[str, Any]:
        """("ok", value), or (status, reason) with status error, oom or timeout; the worker survives or is replaced."""
        if self._process is None:
            self._start()
        self._conn.send((task, args))
        deadline = time.monotonic() + timeout_s
        while True:
            if self._conn.poll(POLL_S):
                try:
                    return self._conn.recv()
                except EOFError:  # the worker died; the pipe reads as closed
                    return self._death()
            if not self._process.is_alive():
                return self._death()
            try:
                rss = status_bytes("VmRSS", self._process.pid)
            except (FileNotFoundError, KeyError, ProcessLookupError):  # exiting: no status or no memory fields
                continue
            if rss > self.memory_limit_bytes:
                self.close()
                return (
                    "oom",
                    f"worker RSS {rss / 2**30:.2f} GiB passed the limit {self.memory_limit_bytes / 2**30:.2f} GiB",
                )
            if time.monotonic() > deadline:
                self.close()
                return "timeout", f"no result within cell_timeout_s={timeout_s:g} s"
