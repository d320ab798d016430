"""Bench beyond one process: a sweep split into submitit jobs, the timing lock, folder claims, the merged report."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from bench import rows as results
from bench.__main__ import main
from bench.core.locks import timing_lock
from bench.errors import BenchConfigError
from bench.report import analysis as summary
from bench.report import cli as report_cli
from bench.report import render as report
from bench.sweep import writer
from bench.sweep.config import CONF_DIR, compose_config, register_configs
from bench.sweep.run import run

REPO = Path(__file__).parent.parent
TINY = [
    "impls.patterns=[full,sdpa_math]",
    "sweep.heads=2",
    "sweep.head_dims=16",
    "timing=smoke",
    "progress=false",
    "report=false",
]
CELL_COLUMNS = [c for c in results.IDENTITY_COLUMNS if c not in ("run_id", "job_id")]


@pytest.fixture(scope="module")
def submitit_sweep(tmp_path_factory) -> Path:
    """A two-job multirun through submitit_local, started from another folder into its default results/<time>/.

    Each cell samples for a second, so that jobs measuring at once could not miss each other.
    """
    cwd = tmp_path_factory.mktemp("launch")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
         "sweep.seq_lens=[32],[64]", *TINY, "timing.budget_s=1", "timing.max_samples=100000",
         f"timing_lock={cwd / 'timing.lock'}"],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_dir,) = (cwd / "results").iterdir()  # `${now}` resolved once for both jobs
    return sweep_dir


def assert_same_cells(merged: pd.DataFrame, single: pd.DataFrame) -> None:
    """The rows of a sweep split into jobs are the cells of the same sweep run in one process."""

    def cells(rows: pd.DataFrame) -> pd.DataFrame:
        return rows[CELL_COLUMNS].sort_values("cell_id", ignore_index=True)

    pd.testing.assert_frame_equal(cells(merged), cells(single))


def assert_measured_one_after_the_other(sweep_dir: Path) -> None:
    """Two jobs started at once: one waited for the timing lock, and no two measured at the same time."""
    rows = results.load(sweep_dir)
    assert rows["exclusive"].all()
    spans = rows.assign(start=pd.to_datetime(rows["started"]), end=pd.to_datetime(rows["timestamp"]))
    spans = spans.groupby("job_id").agg(start=("start", "min"), end=("end", "max")).sort_values("start")
    assert spans["start"].iloc[1] >= spans["end"].iloc[0]  # the second job began measuring after the first ended
    assert summary.concurrent_measurements(rows).empty
    job_logs = [path.read_text() for path in sweep_dir.glob(".submitit/*/*_log.out")]
    # and they did start at once: one of them waited for the lock
    assert len(job_logs) == 2 and any("waiting for the timing lock" in log for log in job_logs)


def test_a_sweep_split_into_submitit_jobs_merges_into_the_cells_of_one_process(submitit_sweep, tmp_path):
    merged = results.load(submitit_sweep)
    single = run(compose_config([*TINY, "sweep.seq_lens=[32,64]", f"timing_lock={tmp_path / 'lock'}"]), tmp_path, "one")
    assert_same_cells(merged, single)
    assert len(merged) == 4 and (merged["status"] == "ok").all()
    assert sorted(zip(merged["job_id"], merged["seq_len"], strict=True)) == [("0", 32), ("0", 32), ("1", 64), ("1", 64)]
    assert (merged["run_id"] == submitit_sweep.name).all() and (merged["hostname"] != "").all()


def test_jobs_started_at_once_measure_one_after_the_other(submitit_sweep):
    assert_measured_one_after_the_other(submitit_sweep)


def test_report_over_the_sweep_folder_merges_the_jobs_and_warns_about_concurrent_ones(submitit_sweep, tmp_path):
    assert report_cli.main([str(submitit_sweep), "--baseline", "full", "--out", str(tmp_path / "merged")]) == 0
    markdown = (tmp_path / "merged" / "report.md").read_text()
    assert "4 cells from 2 run(s)" in markdown and "Measured concurrently" not in markdown
    for job in ("0", "1"):
        assert f"### {submitit_sweep.name}/{job}\n" in markdown
    # the same rows as if job 1 had measured without the lock, at job 0's times
    rows = results.load(submitit_sweep)
    job_0 = rows[rows["job_id"] == "0"]
    rows.loc[rows["job_id"] == "1", ["started", "timestamp"]] = job_0[["started", "timestamp"]].to_numpy()
    html = report.render_report(rows, [submitit_sweep], tmp_path / "concurrent", "full").read_text()
    host = rows["hostname"].iloc[0]
    assert f"Measured concurrently on {host}: jobs {submitit_sweep.name}/0 and {submitit_sweep.name}/1 ran 4" in html


def measured(job_id: str, start_s: float, end_s: float, host: str = "host-a", status: str = "ok") -> dict:
    """A row with just what overlap detection reads; times in seconds after midnight."""
    when = pd.Timestamp("2025-11-22T00:00:00+01:00")
    return {"run_id": "sweep", "job_id": job_id, "hostname": host, "status": status,
            "started": (when + pd.Timedelta(seconds=start_s)).isoformat(),
            "timestamp": (when + pd.Timedelta(seconds=end_s)).isoformat()}  # fmt: skip


def test_overlap_detection_names_the_host_and_jobs_that_measured_at_once():
    rows = pd.DataFrame([measured("0", 0, 2), measured("0", 2, 4), measured("1", 3, 5), measured("1", 5, 6)])
    (found,) = summary.concurrent_measurements(rows).itertuples(index=False)
    assert (found.hostname, found.jobs, found.cells) == ("host-a", "sweep/0 and sweep/1", 2)
    assert (found.start, found.end) == (pd.Timestamp("2025-11-21T23:00:03Z"), pd.Timestamp("2025-11-21T23:00:04Z"))


@pytest.mark.parametrize(
    "cells",
    [
        [measured("0", 0, 2), measured("1", 2, 4), measured("0", 4, 5)],  # one after the other
        [measured("0", 0, 2), measured("1", 1, 3, host="host-b")],  # at once, on two machines
        [measured("0", 0, 2), measured("1", 1, 1.1, status="unsupported")],  # nothing ran
        [measured("0", 0, 2), measured("0", 1, 3)],  # one job (a resumed run's rows)
    ],
    ids=["sequential", "two hosts", "unsupported", "one job"],
)
def test_overlap_detection_is_quiet_when_no_two_jobs_shared_a_machine_at_once(cells):
    assert summary.concurrent_measurements(pd.DataFrame(cells)).empty
    assert summary.concurrent_measurements(pd.DataFrame(cells).drop(columns="started")).empty  # rows from before


def test_the_timing_lock_excludes_other_holders_until_released(tmp_path):
    path = tmp_path / "timing.lock"
    with timing_lock(path) as exclusive, path.open() as other:
        assert exclusive
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with path.open() as other, timing_lock(None) as exclusive:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert not exclusive


def test_a_second_writer_into_a_folder_in_use_fails_without_touching_it(tmp_path):
    first = writer.RowWriter(tmp_path, [], [])
    first.append({"run_id": "first", "cell_id": "a", "status": "ok"})
    with pytest.raises(BenchConfigError, match=f"{tmp_path} is being written by another process"):
        writer.RowWriter(tmp_path, [], ["a"])
    assert list(first.close()["cell_id"]) == ["a"]
    assert writer.RowWriter(tmp_path, [], ["a"]).done_cell_ids == {"a"}  # closed: free to resume


@pytest.mark.parametrize(("preset", "gpus"), [("slurm_gpu", 1), ("slurm_cpu", None)])
def test_the_slurm_presets_compose_onto_submitit_slurm(preset, gpus):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"hydra/launcher={preset}", "hydra.launcher.partition=p"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.bench_slurm_launcher.BenchSlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("p", gpus, 120)
    assert launcher.signal_delay_s == 0  # no early warning: a job past its limit is recorded as TIMEOUT


def test_resume_through_a_launcher_takes_only_hydra_overrides_and_run_folders(tmp_path, capsys):
    done = run(compose_config([*TINY, "sweep.seq_lens=[32]", "timing_lock=null"]), tmp_path / "0", "sweep", "0")
    capsys.readouterr()  # what the measuring run printed (a noisy-cell warning, say) is not the resume's
    for argv, message in [
        ([f"resume={tmp_path / '0'}", "sweep.heads=4"], "drop the overrides ['sweep.heads=4']"),
        ([f"resume={tmp_path / '0'},{tmp_path / '1'}"], f"resume={tmp_path / '1'} is not a run folder"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["-m", "hydra/launcher=submitit_local", *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err
    # Hydra's default launcher: one job per folder in this process, into the folder, from its saved config
    resumed = subprocess.run(
        [sys.executable, "-m", "bench", "-m", f"resume={tmp_path / '0'}"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = results.load(tmp_path / "0")
    assert list(again["started"]) == list(done["started"]) and not (tmp_path / "0" / "0").exists()
    assert (tmp_path / ".resume" / "multirun.yaml").exists()


def test_an_unknown_launcher_exits_2_with_one_line_naming_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["-m", "hydra/launcher=slurm_gpx", "sweep.seq_lens=[32],[64]"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'hydra/launcher/slurm_gpx'" in err and "slurm_gpu, submitit_local" in err
