"""No measured row is ever lost: a kill -9 at every write point of a resume, and Ctrl-C during a run.

Each kill runs `python -m bench resume=<dir>` in a child whose os.replace SIGKILLs the child just
before (or after) one results file is renamed into place: the instant the old, non-atomic writer
lost the rows it was rewriting.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from bench import rows as results
from bench.__main__ import main
from bench.sweep import writer
from bench.sweep.cases import expand
from bench.sweep.config import compose_config
from bench.sweep.run import run

REPO = Path(__file__).parent.parent
TINY = ["timing=smoke", "sweep.seq_lens=[16,32]", "sweep.heads=2", "sweep.head_dims=16", "progress=false",
        "report=false", "timing_lock=null"]  # fmt: skip
KILLED_RESUME = """
import os, signal, sys
from pathlib import Path

target, when, run_dir = sys.argv[1:]
rename = os.replace

def replace(source, destination):
    if when == "before" and Path(destination).name == target:
        os.kill(os.getpid(), signal.SIGKILL)
    rename(source, destination)
    if when == "after" and Path(destination).name == target:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
from bench.__main__ import main
main(["resume=" + run_dir])
"""
# in the order a resume writes them; rows.parquet is written once every cell is measured
WRITE_POINTS = [("rows.csv", "before"), ("rows.csv", "after"), ("config.yaml", "before"),
                ("environment.json", "before"), ("rows.parquet", "before")]  # fmt: skip


def _samples(run_dir: Path) -> dict[str, str]:
    """cell_id -> the raw timing samples of each row on disk (what a re-measurement would change)."""
    rows = results.read_rows_csv(run_dir / "rows.csv")
    assert rows["cell_id"].is_unique
    return dict(zip(rows["cell_id"], rows["time_ms_samples"], strict=True))


def test_a_kill_at_every_write_of_a_resume_loses_no_row(tmp_path):
    cfg = compose_config([*TINY, "impls.patterns=[sdpa_flash,full,sdpa_math]"])
    cell_ids = {cell.cell_id for cell in expand(cfg)}
    run(cfg, tmp_path, run_id="killed")
    # an interrupted run: a header, three complete rows, and half a line
    lines = (tmp_path / "rows.csv").read_text().splitlines(keepends=True)
    (tmp_path / "rows.csv").write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    measured = _samples(tmp_path)
    assert len(measured) == 3

    counts = []
    for target, when in WRITE_POINTS:
        child = subprocess.run([sys.executable, "-c", KILLED_RESUME, target, when, str(tmp_path)],
                               cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
        on_disk = _samples(tmp_path)
        assert {cell: on_disk[cell] for cell in measured} == measured  # every row measured before is still there
        assert yaml.safe_load((tmp_path / "config.yaml").read_text())["sweep"]["seq_lens"] == [16, 32]
        counts.append((target, when, len(measured), len(on_disk)))
        measured = on_disk
    print("kill point, rows before, rows after:", counts)
    assert [after for *_, after in counts] == [3, 3, 3, 3, len(cell_ids)]  # the last child measured the rest

    main([f"resume={tmp_path}"])
    rows = results.load(tmp_path)
    assert sorted(rows["cell_id"]) == sorted(cell_ids)  # every cell exactly once
    assert _samples(tmp_path) == measured  # nothing re-measured
    assert len(pd.read_parquet(tmp_path / "rows.parquet")) == len(cell_ids)
    assert not list(tmp_path.glob(writer.TEMPORARY_GLOB))  # the killed writes' leftovers are cleared


def _as_a_terminal_job():
    """Ctrl-C reaches a job a terminal runs: a shell without job control starts its background commands
    with SIGINT ignored, and pytest may be one of them (`.ci/run &`), which the child would inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_prints_one_line_exits_130_and_leaves_a_resumable_folder(tmp_path):
    run_dir = tmp_path / "run"
    # each cell samples for five seconds, so the interrupt lands inside one even when this process is
    # starved on a busy machine and sees the first row late (at half a second, and once at two, a loaded CI host
    # let the run finish its four cells before the interrupt)
    args = [*TINY, "impls.patterns=[full,sdpa_math]", "timing.budget_s=5", "timing.max_samples=100000",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    child = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, start_new_session=True,
                             preexec_fn=_as_a_terminal_job, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    rows_csv, deadline = run_dir / "rows.csv", time.monotonic() + 120
    while not (rows_csv.exists() and rows_csv.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the first row is written: the second cell is running now
    os.killpg(child.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the runner and its worker
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "Traceback" not in err + out
    (line,) = err.strip().splitlines()
    hint = f"finish with: python -m bench resume={run_dir}"
    done = re.fullmatch(rf"bench: interrupted after (\d) of 4 cells; {re.escape(hint)}", line)
    assert done, line
    measured = _samples(run_dir)
    assert len(measured) == int(done.group(1)) in (1, 2, 3)

    main([f"resume={run_dir}"])
    assert len(_samples(run_dir)) == 4  # every cell once
    assert {cell: _samples(run_dir)[cell] for cell in measured} == measured  # the finished rows kept
