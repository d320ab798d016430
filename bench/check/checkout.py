"""The git checkout the regression check works in: the suite (benchmarks/), the baseline and the commits of an A/B."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def missing_checkout() -> str | None:
    """The one line saying why the check cannot run from here (an installed package has no suite and no commits)."""
    if (REPO / "benchmarks").is_dir() and (REPO / ".git").exists():
        return None
    return (
        f"it needs a git checkout of attention-zoo (benchmarks/, results/baseline/, the commits to compare), and "
        f"{REPO} is an installed package: run it in a clone (git clone ..., pip install -e '.[all]')"
    )
