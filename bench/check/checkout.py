"""The git checkout the regression check works in: the suite (benchmarks/), the baseline and the commits of an A/B."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
