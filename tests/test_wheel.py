"""The project as a package: a wheel installed outside the checkout runs `python -m bench` from an empty folder.

The wheel is built from this tree and installed with no dependencies into a fresh virtual environment that
reuses this interpreter's installed packages (its site folders on the path, through a .pth file), so the
test needs no network; it takes about 15 s on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COPY_IGNORED = (".git", ".venv", "build", "*.egg-info", "results", "outputs", "multirun", "__pycache__", ".*_cache")
TINY_GRID = ["impls.patterns=[full,sdpa_math]", "sweep.seq_lens=[32,64]", "sweep.heads=1", "sweep.head_dims=8",
             "timing=smoke", "progress=false", "timing_lock=null"]  # fmt: skip


def _run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # nothing from the checkout
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtual environment holding only the wheel (and, on its path, the installed deps)."""
    work = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools builds in the source folder and would leave build/ there (stale files included)
    source = shutil.copytree(REPO, work / "source", ignore=shutil.ignore_patterns(*COPY_IGNORED))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", work, source]
    built = _run(pip_wheel, work)
    assert built.returncode == 0, built.stderr
    (wheel,) = work.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if "dist-info" not in name} == {
        "attention_zoo",
        "bench",
        "hydra_plugins",
    }
    assert "bench/conf/config.yaml" in names and "bench/report/templates/report.html.j2" in names
    assert "attention_zoo/impls/decode_kernel.c" in names  # compiled at first use by the installed package
    venv = work / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv], work).returncode == 0
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work).stdout.strip()
    # this interpreter's deps (torch, hydra, pandas, ...), after the venv's site-packages, where the wheel goes
    (Path(purelib) / "installed_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    done = _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], work
    )
    assert done.returncode == 0, done.stderr
    return python


def test_the_installed_package_runs_a_sweep_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    where = _run(
        [installed, "-c", "import bench, attention_zoo; print(bench.__file__, attention_zoo.__file__)"], tmp_path
    )
    assert str(REPO) not in where.stdout and "site-packages" in where.stdout, where.stdout + where.stderr
    done = _run([installed, "-m", "bench", *TINY_GRID], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = (tmp_path / "results").iterdir()
    rows = (run_dir / "rows.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # the header, two entries x two lengths
    assert (run_dir / "report.html").stat().st_size > 0 and (run_dir / "report.md").is_file()


def test_the_check_says_in_one_line_that_it_needs_a_checkout(installed: Path, tmp_path: Path) -> None:
    done = _run([installed, "-m", "bench.check", "--base"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "needs a git checkout" in done.stderr, done.stderr
