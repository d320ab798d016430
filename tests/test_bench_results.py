"""Bench results: a real multirun through the CLI, resuming after a crash, and the tolerant loader."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

from bench import rows as results
from bench.__main__ import main
from bench.sweep.cases import expand
from bench.sweep.config import compose_config
from bench.sweep.run import run

REPO = Path(__file__).parent.parent
TINY = [
    "timing=smoke",
    "sweep.seq_lens=[16,32]",
    "sweep.heads=2",
    "sweep.head_dims=16",
    "progress=false",
    "report=false",
]


def test_cli_multirun_writes_one_folder_per_job_and_the_loader_merges_them(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "-m", "sweep.head_dims=[8],[16]", "sweep.seq_lens=[32]",
         "impls.patterns=[sdpa_flash,full]", "timing=smoke", "progress=false", f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (sweep_dir / "0" / "rows.parquet").exists() and (sweep_dir / "1" / "config.yaml").exists()
    rows = results.load(sweep_dir)
    assert sorted(zip(rows["job_id"], rows["head_dim"], rows["impl"], strict=False)) == [
        ("0", 8, "full"), ("0", 8, "sdpa_flash"), ("1", 16, "full"), ("1", 16, "sdpa_flash")
    ]  # fmt: skip
    assert (rows["run_id"] == "sweep").all() and (rows["status"] == "ok").all()
    assert "median ms by seq_len" in done.stdout and str(sweep_dir / "1") in done.stdout
    assert (sweep_dir / "1" / "report.html").exists()  # each job ends with its report


def test_resume_after_a_crash_runs_each_cell_exactly_once(tmp_path, capsys):
    cfg = compose_config([*TINY, "impls.patterns=[sdpa_flash,full]"])
    cell_ids = {cell.cell_id for cell in expand(cfg)}
    run(cfg, tmp_path, run_id="crashed")
    # a run killed mid-write: one complete row, then half a line
    lines = (tmp_path / "rows.csv").read_text().splitlines(keepends=True)
    (tmp_path / "rows.csv").write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    kept_cell_id = results.load(tmp_path)["cell_id"].item()

    main([f"resume={tmp_path}"])

    rows = results.load(tmp_path)
    assert sorted(rows["cell_id"]) == sorted(cell_ids)
    assert rows.set_index("cell_id").loc[kept_cell_id, "time_ms_samples"] in lines[1]  # kept, not re-run
    assert (rows["run_id"] == "crashed").all()
    assert len(pd.read_parquet(tmp_path / "rows.parquet")) == len(cell_ids)
