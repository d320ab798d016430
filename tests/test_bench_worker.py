"""The bench worker: a cell that exits, is killed, hogs memory or hangs costs one row; the sweep goes on.

Also the measurement itself: peak memory of full vs flash attention, and skipping cells predicted too big.
"""

import os
import signal
import sys
import threading

import pytest

from attention_zoo import registry
from bench.sweep.config import compose_config
from bench.sweep.run import run
from bench.sweep.worker import Worker

FAULTY_MODULE = "bench_faulty_impls"  # tests/bench_faulty_impls.py; the worker imports it too
SMOKE = ["timing=smoke", "sweep.heads=2", "sweep.head_dims=16", "progress=false", "report=false", "timing_lock=null"]


@pytest.fixture
def faulty_impls():
    """Register the misbehaving entries for one test, and remove them afterwards."""
    module = __import__(FAULTY_MODULE)
    yield module.BEHAVIOURS
    for name in module.BEHAVIOURS:
        registry._REGISTRY.pop(name, None)
    sys.modules.pop(FAULTY_MODULE)


def test_worker_deaths_become_rows_and_the_sweep_goes_on(faulty_impls, tmp_path):
    # each misbehaving cell is followed by a healthy one, which must run in the restarted worker
    order = ["_bench_test_exit", "sdpa_flash", "_bench_test_sigkill", "full", "_bench_test_sigusr1", "sdpa_math",
             "_bench_test_hog", "blockwise", "_bench_test_hang", "full", "_bench_test_cuda_fatal",
             "_bench_test_needs_cuda"]  # fmt: skip
    cfg = compose_config([*SMOKE, "sweep.seq_lens=[32]", f"impls.patterns=[{','.join(order)}]",
                          f"imports=[{FAULTY_MODULE}]", "memory_limit_bytes=1000000000",
                          "timing.cell_timeout_s=15"])  # fmt: skip
    # 15 s: on a Firecracker VM the first touch of fresh pages is slow enough that the hog, faulting in 1 GB,
    # once ran past a 5 s limit (timeout, not oom); the hang sleeps 60 s, past either
    rows = run(cfg, tmp_path, run_id="faults").set_index("impl")
    assert len(rows) == len(set(order))
    assert dict(rows["status"]) == {
        "_bench_test_exit": "error", "sdpa_flash": "ok", "_bench_test_sigkill": "error", "full": "ok",
        "_bench_test_sigusr1": "error", "sdpa_math": "ok", "_bench_test_hog": "oom", "blockwise": "ok",
        "_bench_test_hang": "timeout", "_bench_test_cuda_fatal": "error", "_bench_test_needs_cuda": "ok",
    }  # fmt: skip
    assert rows.loc["_bench_test_exit", "reason"] == "worker exited with code 3"
    # killed from outside, far below the memory limit: the signal is named, the OOM killer is not blamed
    assert rows.loc["_bench_test_sigkill", "reason"] == "worker killed by SIGKILL from outside"
    assert rows.loc["_bench_test_sigusr1", "reason"] == "worker killed by SIGUSR1 from outside"
    assert "passed the limit" in rows.loc["_bench_test_hog", "reason"]
    assert "cell_timeout_s=15" in rows.loc["_bench_test_hang", "reason"]
    # the worker replied, then exited: the next cell ran in a fresh process with a working context
    assert rows.loc["_bench_test_cuda_fatal", "reason"] == "AcceleratorError: CUDA error: device-side assert triggered"


def _kill(kills: list[int], process) -> None:
    """SIGKILL the worker from outside."""
    os.kill(process.pid, signal.SIGKILL)
    kills.append(process.pid)


def test_a_worker_killed_between_cells_is_restarted_and_the_sweep_completes(tmp_path, monkeypatch):
    cfg = compose_config([*SMOKE, "sweep.seq_lens=[16,32]", "impls.patterns=[full,sdpa_math]"])
    measure_call, kills = Worker.call, []

    def call_then_kill(worker: Worker, task: str, *args, timeout_s: float):
        reply = measure_call(worker, task, *args, timeout_s=timeout_s)
        if task == "cell" and len(kills) < 2:  # after the first two cells, gone before the next one
            _kill(kills, worker._process)
            worker._process.join()
        return reply

    monkeypatch.setattr(Worker, "call", call_then_kill)
    rows = run(cfg, tmp_path, run_id="between")
    assert len(set(kills)) == 2
    assert len(rows) == 4 and (rows["status"] == "ok").all(), rows["reason"]


def test_a_worker_killed_during_a_cell_costs_that_cell_only(faulty_impls, tmp_path, monkeypatch):
    cfg = compose_config([*SMOKE, "sweep.seq_lens=[16]", "impls.patterns=[_bench_test_hang,full]",
                          f"imports=[{FAULTY_MODULE}]", "timing.cell_timeout_s=20"])  # fmt: skip
    measure_call, kills = Worker.call, []

    def call_killed_meanwhile(worker: Worker, task: str, *args, timeout_s: float):
        if task == "cell" and args[0].impl == "_bench_test_hang":  # the worker is up: it has measured the GEMM
            threading.Timer(1.0, _kill, (kills, worker._process)).start()
        return measure_call(worker, task, *args, timeout_s=timeout_s)

    monkeypatch.setattr(Worker, "call", call_killed_meanwhile)
    rows = run(cfg, tmp_path, run_id="during").set_index("impl")
    assert dict(rows["status"]) == {"_bench_test_hang": "error", "full": "ok"}
    assert rows.loc["_bench_test_hang", "reason"] == "worker killed by SIGKILL from outside"
    assert len(kills) == 1


def test_peak_memory_full_holds_the_scores_flash_does_not(tmp_path):
    n, heads = 4096, 8
    cfg = compose_config([*SMOKE, f"sweep.seq_lens=[{n}]", f"sweep.heads={heads}", "sweep.head_dims=64",
                          "impls.patterns=[full,sdpa_flash]", "timing.warmup_calls=0", "timing.min_samples=1",
                          "timing.max_samples=1"])  # fmt: skip
    rows = run(cfg, tmp_path, run_id="memory").set_index("impl")
    scores_and_probs = 2 * heads * n * n * 4  # fp32: 1 GiB
    assert (rows["status"] == "ok").all(), rows["reason"]
    assert 0.7 < rows.loc["full", "peak_bytes"] / scores_and_probs < 1.6
    assert rows.loc["sdpa_flash", "peak_bytes"] / scores_and_probs < 0.1
    assert (rows["error_rel_l2"] < 1e-5).all()


def test_a_cell_predicted_too_big_is_skipped_without_running(tmp_path):
    cfg = compose_config([*SMOKE, "sweep.seq_lens=[64,32768]", "sweep.heads=8", "impls.patterns=[full]"])
    rows = run(cfg, tmp_path, run_id="skip").set_index("seq_len")
    assert rows.loc[64, "status"] == "ok"
    assert rows.loc[32768, "status"] == "skipped"
    assert rows.loc[32768, "predicted_bytes"] > 2 * 8 * 32768**2 * 4
    assert "exceeds the memory limit" in rows.loc[32768, "reason"]
