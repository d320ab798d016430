"""Bench on a real SLURM scheduler: a one-node cluster on localhost (scripts/local_slurm.sh), jobs via slurm_cpu.

Two multiruns go to the cluster at once, each split into 2 SLURM jobs (N = 32 and N = 64) sharing a
timing lock of its own: one runs to completion; in the other every job measures `full`, then waits at
a gate (a test entry that waits while a file exists), so that the job holding the lock can be
cancelled with its row written, and the other, after it, runs past its 1-minute time limit. Resumed
through the same launcher with the gate open, it ends with the full table. SLURM checks time limits
every ~30 s, so the second multirun takes 60-95 s; the whole module about 2 minutes.
Skips, with the reason, where the cluster cannot be started here (not root, packages not installed).
"""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from bench_faulty_impls import GATE_ENV
from test_bench_launchers import TINY, assert_measured_one_after_the_other, assert_same_cells

from bench import rows as results
from bench.report import analysis as summary
from bench.sweep.config import compose_config
from bench.sweep.run import run

REPO = Path(__file__).parent.parent
SCRIPT = REPO / "scripts" / "local_slurm.sh"
SLURM_CPU = ["hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
GATED = ["impls.patterns=[full,_bench_test_gated]", "imports=[bench_faulty_impls]"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running one-node cluster; the environment that points SLURM's commands (and the jobs' imports) at it."""
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root (munged, slurmd and the jobs run as root)")
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([SCRIPT, "start", state], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.skip(f"no local SLURM cluster: {started.stderr.strip().splitlines()[-1]}")
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    yield env
    subprocess.run([SCRIPT, "stop", state], check=True, timeout=120)


def bench(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def accounting(env: dict, *job_ids: str) -> dict[str, tuple[str, int]]:
    """sacct's state and elapsed seconds of each job (SLURM job id -> (state, seconds))."""
    command = [
        "sacct",
        "--noheader",
        "--parsable2",
        "--format=JobID,State,ElapsedRaw",
        *(f"--jobs={j}" for j in job_ids),
    ]
    listed = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    jobs = [line.split("|") for line in listed.splitlines()]
    return {job: (state, int(elapsed)) for job, state, elapsed in jobs if "." not in job}  # not the job's steps


def rows_of(folder: Path):
    return results.read_rows_csv(folder / results.ROWS_CSV) if (folder / results.ROWS_CSV).exists() else None


@pytest.fixture(scope="module")
def sweeps(cluster, tmp_path_factory):
    """Both multiruns, the cancellation, the resume, and the same sweeps run in one process."""
    work = tmp_path_factory.mktemp("sweeps")
    whole, gated, gate = work / "whole", work / "gated", work / "gate"
    gate.touch()
    complete = bench(["-m", *SLURM_CPU, "hydra.launcher.timeout_min=5", "sweep.seq_lens=[32],[64]", *TINY,
                      "timing.budget_s=1", "timing.max_samples=100000", f"timing_lock={work / 'whole.lock'}",
                      f"hydra.sweep.dir={whole}"], cluster, work)  # fmt: skip
    stopped = bench(["-m", *SLURM_CPU, "hydra.launcher.timeout_min=1", "sweep.seq_lens=[32],[64]", *TINY, *GATED,
                     f"timing_lock={work / 'gated.lock'}", f"hydra.sweep.dir={gated}"],
                    {**cluster, GATE_ENV: str(gate)}, work)  # fmt: skip

    # the job that took the lock measures `full`, then waits at the gate: cancel it there
    deadline = time.monotonic() + 120
    while not (measured := [f for f in (gated / "0", gated / "1") if (rows := rows_of(f)) is not None and len(rows)]):
        assert time.monotonic() < deadline and stopped.poll() is None, stopped.communicate()
        time.sleep(0.2)
    (cancelled,) = measured
    subprocess.run(["scancel", rows_of(cancelled)["slurm_job_id"].iloc[0]], env=cluster, check=True)

    # meanwhile: the same sweeps in one process
    one_lock = f"timing_lock={work / 'one.lock'}"
    single = run(compose_config([*TINY, "sweep.seq_lens=[32,64]", one_lock]), work / "one", "one")
    one_gated = bench([*TINY, *GATED, "sweep.seq_lens=[32,64]", f"hydra.run.dir={work / 'one_gated'}",
                       one_lock], cluster, work)  # fmt: skip
    assert one_gated.wait(120) == 0, one_gated.communicate()

    _, complete_err = complete.communicate(timeout=300)
    assert complete.returncode == 0, complete_err[-3000:]
    _, stopped_err = stopped.communicate(timeout=300)
    kept = {folder: rows_of(folder) for folder in (gated / "0", gated / "1")}  # what the two jobs left
    gate.unlink()
    assert stopped.returncode == 1, stopped_err[-3000:]
    resume_command = shlex.split(stopped_err.strip().splitlines()[-1].split("finish them with: ", 1)[1])
    assert resume_command[:2] == ["python", "-m"]
    resumed = subprocess.run([sys.executable, *resume_command[1:]], cwd=work, env=cluster, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    return SimpleNamespace(
        whole=whole, gated=gated, single=single, one_gated=results.load(work / "one_gated"), cancelled=cancelled,
        timed_out=({gated / "0", gated / "1"} - {cancelled}).pop(), stopped=stopped, stopped_err=stopped_err,
        kept=kept, resumed=resumed, env=cluster,
    )  # fmt: skip


def test_a_sweep_split_into_slurm_jobs_merges_into_the_cells_of_one_process(sweeps):
    merged = results.load(sweeps.whole)
    assert_same_cells(merged, sweeps.single)
    assert len(merged) == 4 and (merged["status"] == "ok").all()
    slurm_jobs = merged["slurm_job_id"].unique()
    assert len(slurm_jobs) == 2 and {state for state, _ in accounting(sweeps.env, *slurm_jobs).values()} == {
        "COMPLETED"
    }
    submission = next(sweeps.whole.glob(".submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-1" in submission and "--gpus" not in submission and "--signal=USR2@0" in submission


def test_two_slurm_jobs_on_one_node_measure_one_after_the_other(sweeps):
    assert_measured_one_after_the_other(sweeps.whole)


def test_a_cancelled_and_a_timed_out_job_keep_their_rows_and_are_reported_one_line_each(sweeps):
    for folder in (sweeps.cancelled, sweeps.timed_out):
        assert list(sweeps.kept[folder]["impl"]) == ["full"]  # measured before the gate; nothing after it
    job_state = {sweeps.cancelled: "CANCELLED", sweeps.timed_out: "TIMEOUT"}
    lines = sweeps.stopped_err.strip().splitlines()
    assert len(lines) == 3, sweeps.stopped_err
    for line, folder in zip(lines, sorted(job_state), strict=False):
        slurm_job = line.split("(SLURM job ")[1].split(")")[0]
        state, elapsed_s = accounting(sweeps.env, slurm_job)[slurm_job]
        assert state.startswith(job_state[folder])
        assert f"ended {job_state[folder]}" in line and line.endswith(f"1 row(s) kept in {folder}")
        if folder == sweeps.timed_out:  # its 1-minute limit, which SLURM enforces within its 30 s period
            assert 60 <= elapsed_s < 100
    assert f"resume={sweeps.gated / '0'},{sweeps.gated / '1'}" in lines[2]


def test_the_stopped_jobs_resumed_through_the_launcher_finish_the_table(sweeps):
    assert sweeps.resumed.returncode == 0, sweeps.resumed.stderr[-3000:]
    merged = results.load(sweeps.gated)
    assert_same_cells(merged, sweeps.one_gated)
    assert (merged["status"] == "ok").all() and merged["exclusive"].all()
    for folder, kept in sweeps.kept.items():  # the rows written before the jobs were stopped are still there
        assert (results.read_rows_csv(folder / results.ROWS_CSV).iloc[: len(kept)]["started"] == kept["started"]).all()
    assert merged["slurm_job_id"].nunique() == 4  # two jobs stopped, two that finished them
    assert summary.concurrent_measurements(merged).empty
