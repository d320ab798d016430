"""The report of a real small run, as a browser shows it: its sections and tables in the DOM, one colour per entry
in every figure, and a run where nothing was measured reported as such with exit code 1."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import style

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
SMALL = ["timing=smoke", "sweep.heads=2", "sweep.head_dims=16", "sweep.seq_lens=[32,64,128]", "progress=true",
         "timing_lock=null"]  # fmt: skip
IMPLS = "impls.patterns=[sdpa_flash,full,sliding_window,performer,peer_performer]"
TABLES = ("table-time", "table-memory", "table-throughput", "table-setup")
FIGURES = ("complexity_time", "complexity_memory", "throughput", "speedup", "accuracy")


def bench(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *overrides], cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("results") / "small"
    done = bench(*SMALL, IMPLS, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    return run_dir, done


def browser(page: Path, tmp_path: Path, *action: str) -> subprocess.CompletedProcess:
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1400,3000",
    ]  # fmt: skip
    return subprocess.run([*flags, *action, page.as_uri()], capture_output=True, text=True, timeout=60)


def test_a_non_terminal_gets_one_line_per_finished_cell(small_run):
    _, done = small_run
    lines = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(lines) == 15 and "\r" not in done.stderr  # 5 entries x 3 N, no tqdm bar
    assert re.fullmatch(r"\[15/15\] peer_performer N=128 fwd: [\d.e+]+ ms( noisy)?", lines[-1])
    table = done.stdout.split("median ms by seq_len", 1)[1].splitlines()
    names = [line.split()[0] for line in table[3:8]]
    assert names.index("peer_performer") == names.index("performer") + 1  # each peer beside its entry


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on PATH to render report.html")
def test_the_report_of_a_real_run_renders_its_sections_tables_and_figures(small_run, tmp_path):
    run_dir, _ = small_run
    dom = browser(run_dir / "report.html", tmp_path, "--dump-dom")
    assert ":CONSOLE" not in dom.stderr, dom.stderr  # no scripts: any console message is a load or parse failure
    html = dom.stdout
    order = [html.index(f'id="{anchor}"') for anchor in ("headlines", "tables", "figures", "exponents", "status")]
    assert order == sorted(order)  # headlines, then tables, then plots
    for anchor in TABLES:
        section = html.split(f'id="{anchor}"', 1)[1].split("</table>", 1)[0]
        assert section.count("<tr") == 1 + 5 and "N=32" in section and "N=128" in section  # header + one per entry
    time_table = html.split('id="table-time"', 1)[1].split("</table>", 1)[0]
    assert re.search(r"<td>[\d.]+ \(IQR [\d.e+-]+\)[*†]*</td>", time_table)
    throughput = html.split('id="table-throughput"', 1)[1].split("</table>", 1)[0]
    assert re.search(r"<td>[\d.]+ \([\d.]+%\)[*†]*</td>", throughput)
    assert "Fastest exact at N=128:" in html
    for name in FIGURES:
        assert f'id="figure-{name}"' in html


def test_each_entry_keeps_one_colour_in_every_figure(small_run):
    run_dir, _ = small_run
    drawn = json.loads((run_dir / "figures.json").read_text())
    assert set(drawn) == set(FIGURES)
    seen: dict[str, set] = {}
    for colours in drawn.values():
        for series, colour in colours.items():
            seen.setdefault(series, set()).add(colour)
    assert set(seen) == {"sdpa_flash", "full", "sliding_window", "performer", "peer_performer"}
    for series, colours in seen.items():
        assert colours == {style.colour(series)}, series  # the same in every figure, and derived from the name
    assert len({next(iter(c)) for c in seen.values()}) == len(seen)  # and no two entries share one


def test_a_run_where_no_cell_is_ok_says_so_and_exits_1(tmp_path):
    run_dir = tmp_path / "nothing"
    done = bench(*SMALL, "impls.patterns=[sdpa_cudnn,sdpa_efficient]", f"hydra.run.dir={run_dir}")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"bench: no cell was measured (6 unsupported); the reasons are in {run_dir / 'rows.csv'}"
    )
    html = (run_dir / "report.html").read_text()
    assert "No cell finished with status ok." in html and "No cell was measured (6 unsupported)" in html
    again = subprocess.run([sys.executable, "-m", "bench.report", str(run_dir)], cwd=REPO, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "no cell" in again.stderr
