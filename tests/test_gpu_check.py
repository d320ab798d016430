"""The CPU dry run of scripts/gpu_check.sh, so the GPU run cannot fail on a missing package or a typo.

The wheels of scripts/gpu_wheels.txt are fetched for CPython 3.12 (the GPU machine's Python) as the lead
fetches them, checked complete against the GPU image's package list, installed into a temporary site
as the script installs them there, and every step runs in order with GPU_CHECK_DEVICE=cpu at tiny sizes.
Costs about a minute (PyPI downloads of ~4 MB, then the steps); needs PyPI, as the install does.
"""

from __future__ import annotations

import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
STEPS = ["versions", "pytest -m cuda", "sweep", "do_bench", "report"]
GPU_PYTHON = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
              "sys_platform": "linux", "platform_machine": "x86_64", "implementation_name": "cpython"}  # fmt: skip
PROVIDED_THERE = {"torch", "triton", "numpy", "pandas", "pyarrow", "matplotlib", "seaborn", "jinja2", "tqdm", "scipy",
                  "psutil"}  # fmt: skip


def _names(path: Path) -> set[str]:
    lines = [line.split("==")[0] for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {canonicalize_name(name) for name in lines}


def _requirements(wheel: Path) -> set[str]:
    """What a wheel needs installed on the GPU machine (its Requires-Dist without extras, for CPython 3.12)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    needed = set()
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is None or requirement.marker.evaluate({**GPU_PYTHON, "extra": ""}):
                needed.add(canonicalize_name(requirement.name))
    return needed


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu_wheels")
    fetched = subprocess.run(["bash", "scripts/fetch_gpu_wheels.sh", str(folder)], cwd=REPO, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    return folder


def test_the_wheel_list_covers_what_the_gpu_machine_lacks(wheels: Path) -> None:
    pinned = _names(REPO / "scripts" / "gpu_wheels.txt")
    there = _names(REPO / "scripts" / "gpu_image_packages.txt") | PROVIDED_THERE
    assert len(list(wheels.glob("*.whl"))) == len(pinned)
    for wheel in wheels.glob("*.whl"):
        missing = _requirements(wheel) - pinned - there
        assert not missing, f"{wheel.name} needs {sorted(missing)}: pin them in scripts/gpu_wheels.txt"
    project = subprocess.run(["python3", "-c", "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'));"
                              "print('\\n'.join(d['project']['dependencies'] + d['project']['optional-dependencies']"
                              "['peers'] + d['project']['optional-dependencies']['xformers']))"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    needed = {canonicalize_name(Requirement(line).name) for line in project}
    assert not needed - pinned - there, f"the project needs {sorted(needed - pinned - there)} on the GPU machine"


def test_the_gpu_check_runs_every_step_in_order_on_the_cpu(wheels: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_TIMING_LOCK": str(tmp_path / "timing.lock")}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", str(out), str(wheels)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    log = (out / "gpu_check.log").read_text()
    assert done.returncode == 0, log[-4000:]
    ends = [log.index(f"=== {step}: exit 0") for step in STEPS]
    assert ends == sorted(ends), "the steps ran out of order"
    assert "SKIP (CUDA-only) do_bench: triton.testing.do_bench times CUDA events" in log
    assert re.search(r"SKIPPED \[\d+\] tests/test_oracle_cuda.py:\d+: no CUDA device", log)
    assert "every step passed" in log
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"rows.csv", "memory_rows.csv", "report.md", "gpu_check.log"} <= set(files)
    assert "Cells: 32 rows of 32 expected, 32 distinct" in (out / "report.md").read_text()
