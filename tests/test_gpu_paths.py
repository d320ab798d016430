"""The CUDA paths' logic, checked on the CPU: no CUDA work in the runner, per-GPU timing locks, GPU memory
limits, the device columns, and inputs drawn once per problem."""

from __future__ import annotations

import fcntl
import math
import os

import pytest
import torch

import attention_zoo as z
from bench import rows as results
from bench.core.cell import Cell
from bench.core.locks import timing_lock, timing_lock_paths
from bench.sweep import measure
from bench.sweep.budget import memory_limit
from bench.sweep.config import compose_config
from bench.sweep.environment import device_environment
from bench.sweep.run import run
from bench.sweep.worker import Worker

SMOKE = ["timing=smoke", "sweep.heads=2", "sweep.head_dims=16", "progress=false", "report=false"]


def test_the_runner_leaves_cuda_to_the_worker(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Availability probes, FLOP counts (flex builds masks on the device) and device names of CUDA cells
    are asked in the worker: the runner process would otherwise hold a second CUDA context on the GPU."""

    def touched(*args, **kwargs):
        raise AssertionError("the runner process called into torch.cuda")

    for name in ("is_available", "get_device_name", "get_device_properties", "mem_get_info", "init", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, touched)
    impls = "[sdpa_flash,xformers,triton_flash,flex_sliding_window,blockwise]"
    cfg = compose_config([*SMOKE, "sweep.seq_lens=[32]", "sweep.devices=cuda", f"impls.patterns={impls}",
                          f"timing_lock={tmp_path / 'lock'}"])  # fmt: skip
    rows = run(cfg, tmp_path / "run", run_id="no-cuda-here")
    assert len(rows) == 5 and (rows["status"] == "unsupported").all(), rows[["impl", "status", "reason"]]
    assert rows["reason"].str.contains("CUDA").all(), rows["reason"].tolist()
    assert (rows["flops"] > 0).all()  # counted for the same problem on the host


def test_gpu_only_runs_lock_each_gpu_they_use(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "timing.lock"
    for variable in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(variable, raising=False)
    assert timing_lock_paths(lock, {"cpu"}) == [lock]
    assert timing_lock_paths(lock, {"cpu", "cuda"}) == [lock]  # CPU timings share everything: machine-wide
    assert timing_lock_paths(lock, {"cuda", "cuda:1"}) == [tmp_path / "timing.gpu0.lock", tmp_path / "timing.gpu1.lock"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert timing_lock_paths(lock, {"cuda:1"}) == [tmp_path / "timing.gpu5.lock"]
    monkeypatch.setenv("SLURM_STEP_GPUS", "6")  # cgroups: the job sees its GPU as 0, SLURM names it 6
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert timing_lock_paths(lock, {"cuda"}) == [tmp_path / "timing.gpu6.lock"]

    monkeypatch.delenv("SLURM_STEP_GPUS")
    with timing_lock(lock, {"cuda:0"}) as exclusive:
        assert exclusive
        for gpu, free in (("gpu0", False), ("gpu1", True)):
            descriptor = os.open(tmp_path / f"timing.{gpu}.lock", os.O_RDONLY | os.O_CREAT)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                assert free, f"{gpu} should be held by the run on cuda:0"
            except BlockingIOError:
                assert not free, f"a run on cuda:0 must not hold {gpu}"
            finally:
                os.close(descriptor)


def test_cuda_cells_are_limited_by_the_gpus_free_memory() -> None:
    worker = Worker(threads=1, imports=[], memory_limit_bytes=123)  # never started
    gpu_cell = Cell("full", z.Problem(device="cuda"), "fwd", {}, 0.0)
    cpu_cell = Cell("full", z.Problem(), "fwd", {}, 0.0)
    assert memory_limit(gpu_cell, worker.memory_limit_bytes, {"gpu_memory_free_bytes": 100e9}) == 90e9
    assert memory_limit(cpu_cell, worker.memory_limit_bytes, {"gpu_memory_free_bytes": 100e9}) == 123
    assert (
        memory_limit(gpu_cell, worker.memory_limit_bytes, {}) == 123
    )  # the GPU could not be asked: the worker's limit


def test_device_columns_are_every_row_column_they_fill() -> None:
    columns = device_environment("cpu")
    assert set(columns) == {"device_name", *results.DEVICE_COLUMNS}
    assert set(results.DEVICE_COLUMNS) <= set(results.MEASURED_COLUMNS)
    assert columns["gemm_size"] == 2048 and math.isnan(columns["sm_clock_mhz"]) and columns["cudnn_version"] == ""


def test_inputs_are_drawn_once_per_problem_and_copied_per_cell() -> None:
    problem, other = z.Problem(q_heads=2, q_len=16, head_dim=8), z.Problem(q_heads=2, q_len=24, head_dim=8)
    first = measure.cell_inputs(problem, seed=0, requires_grad=False)
    second = measure.cell_inputs(problem, seed=0, requires_grad=True)
    for a, b, drawn in zip(first, second, problem.make_inputs(seed=0), strict=True):
        assert torch.equal(a, drawn) and torch.equal(b, drawn)
        assert a.data_ptr() != b.data_ptr() and b.requires_grad and not a.requires_grad
    measure.cell_inputs(other, seed=0, requires_grad=False)
    assert list(measure._INPUTS) == [(other, 0)]  # only the latest problem's are kept
