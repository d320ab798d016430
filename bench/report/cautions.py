"""Warnings about a run's own measurements, shown in the terminal and at the top of the report.

Two kinds: the machine changed speed during the run (the GEMM ceiling measured at its start and end
differ by more than CEILING_DRIFT), and many cells are noisy (IQR/median over 10%, as torch.utils.benchmark
marks them) or have few samples. Timings under either warning compare poorly between entries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import pandas as pd

CEILING_DRIFT = 0.20
NOISY_SHARE = 0.25  # of the ok cells
LOW_SAMPLES = 5  # a median of fewer samples is marked in the tables


def ceiling_drift(ceilings: Iterable[Mapping]) -> list[str]:
    """One sentence per (device, dtype) whose GEMM FLOP/s at the end of the run differs from the start's by > 20%."""
    sentences = []
    for ceiling in ceilings:
        start, end = ceiling.get("start_flop_per_s", math.nan), ceiling.get("end_flop_per_s", math.nan)
        if not (start > 0 and end > 0) or abs(end - start) <= CEILING_DRIFT * start:
            continue
        sentences.append(
            f"The {ceiling['dtype']} GEMM ceiling on {ceiling['device']} moved from {start:.3g} FLOP/s at the start "
            f"of the run to {end:.3g} at its end ({100 * (end / start - 1):+.0f}%): the machine's speed changed "
            "while it measured (other load, clocks), so cells timed at different moments compare poorly."
        )
    return sentences


def noisy_cells(rows: pd.DataFrame) -> list[str]:
    """A sentence when more than NOISY_SHARE of the ok cells are noisy; [] otherwise."""
    ok = rows[rows["status"] == "ok"]
    if not len(ok) or "noisy" not in ok:
        return []
    noisy = int(ok["noisy"].fillna(False).astype(bool).sum())
    if noisy <= NOISY_SHARE * len(ok):
        return []
    return [
        f"{noisy} of {len(ok)} measured cells are noisy (IQR/median > 10%): the machine was busy or the cells "
        "are too short for the timer; rerun them with timing=precise on a quiet machine before trusting small "
        "differences. Noisy cells are marked * in the tables."
    ]
