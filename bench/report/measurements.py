"""The report's tables of absolute numbers per entry and N: median time (IQR), peak memory, FLOP/s, setup time.

Each is one row per (varying axes, series), one column per N. A cell that was not measured shows its
status; a noisy cell (IQR/median > 10%) is marked *, one with fewer than cautions.LOW_SAMPLES timed
samples †, so a reader sees which numbers to trust before comparing them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from bench.report.cautions import LOW_SAMPLES

NOISY_MARK, FEW_SAMPLES_MARK = "*", "†"


def marks(cell) -> str:
    """'*' for a noisy cell, '†' for one with few samples, both where both hold."""
    noisy = bool(cell.get("noisy")) if pd.notna(cell.get("noisy")) else False
    samples = cell.get("n_samples")
    few = pd.notna(samples) and samples < LOW_SAMPLES
    return NOISY_MARK * noisy + FEW_SAMPLES_MARK * few


def _median_iqr(cell) -> str:
    return f"{cell['time_ms_median']:.3g} (IQR {cell['time_ms_iqr']:.2g})" + marks(cell)


def _mib(cell) -> str:
    return "" if pd.isna(cell["peak_bytes"]) else f"{cell['peak_bytes'] / 2**20:.3g}"


def _setup(cell) -> str:
    return "" if pd.isna(cell.get("setup_ms")) else f"{cell['setup_ms']:.3g}"


def flop_unit(rows: pd.DataFrame) -> tuple[str, float]:
    """TFLOP/s where the best cell passes 1 TFLOP/s (a GPU), else GFLOP/s."""
    best = rows.loc[rows["status"] == "ok", "flop_per_s"].max() if "flop_per_s" in rows else np.nan
    return ("TFLOP/s", 1e12) if best >= 1e12 else ("GFLOP/s", 1e9)


def _throughput(scale: float) -> Callable:
    def text(cell) -> str:
        if pd.isna(cell.get("flop_per_s")):
            return ""
        percent = cell.get("pct_of_gemm")
        return f"{cell['flop_per_s'] / scale:.3g}" + ("" if pd.isna(percent) else f" ({percent:.0f}%)") + marks(cell)

    return text


def _wide(rows: pd.DataFrame, axes: Sequence[str], text: Callable) -> pd.DataFrame:
    """One row per (axes, series) in the report's series order, one column per N: text(cell), or the status."""
    if not len(rows):
        return pd.DataFrame()
    shown = rows.assign(shown=[text(c) if c["status"] == "ok" else c["status"] for c in rows.to_dict("records")])
    keys = [*axes, "series"]
    order = shown.drop_duplicates(keys)[keys]
    wide = shown.pivot_table(index=keys, columns="seq_len", values="shown", aggfunc="first", sort=False)
    wide = wide.reindex(pd.MultiIndex.from_frame(order) if len(keys) > 1 else order["series"]).fillna("")
    wide.columns = [f"N={n}" for n in wide.columns]
    return wide[[f"N={n}" for n in sorted(rows["seq_len"].unique())]].reset_index()


def measurement_tables(rows: pd.DataFrame, axes: Sequence[str]) -> tuple[dict[str, pd.DataFrame], str]:
    """The tables by name (time_ms, peak_mib, throughput, setup_ms; unsupported cells left out) and the FLOP/s unit."""
    attempted = rows[rows["status"] != "unsupported"]
    unit, scale = flop_unit(rows)
    return {
        "time_ms": _wide(attempted, axes, _median_iqr),
        "peak_mib": _wide(attempted, axes, _mib),
        "throughput": _wide(attempted, axes, _throughput(scale)),
        "setup_ms": _wide(attempted, axes, _setup),
    }, unit
