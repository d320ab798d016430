"""The bench worker: a cell that exits, is killed, hogs memory or hangs costs one row; the sweep goes on.

Also the measurement itself: peak memory of full vs flash attention, and skipping cells predicted too big.
"""

import sys

import pytest

from attention_zoo import registry
from bench.config import compose_config
from bench.run import run

FAULTY_MODULE = "bench_faulty_impls"  # tests/bench_faulty_impls.py; the worker imports it too
SMOKE = ["timing=smoke", "sweep.heads=2", "sweep.head_dims=16", "progress=false", "report=false"]


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
    order = ["_bench_test_exit", "sdpa_flash", "_bench_test_sigkill", "full", "_bench_test_hog", "sdpa_math",
             "_bench_test_hang", "blockwise"]  # fmt: skip
    cfg = compose_config([*SMOKE, "sweep.seq_lens=[32]", f"impls.patterns=[{','.join(order)}]",
                          f"imports=[{FAULTY_MODULE}]", "memory_limit_bytes=1500000000",
                          "timing.cell_timeout_s=5"])  # fmt: skip
    rows = run(cfg, tmp_path, run_id="faults").set_index("impl").loc[order]
    assert list(rows["status"]) == ["error", "ok", "oom", "ok", "oom", "ok", "timeout", "ok"]
    assert rows.loc["_bench_test_exit", "reason"] == "worker exited with code 3"
    assert "SIGKILL from outside" in rows.loc["_bench_test_sigkill", "reason"]
    assert "passed the limit" in rows.loc["_bench_test_hog", "reason"]
    assert "cell_timeout_s=5" in rows.loc["_bench_test_hang", "reason"]


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
