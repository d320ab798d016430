"""The report's decode section: time per token and state per sequence against the context length L, the
crossovers where each bounded-state family overtakes the exact KV cache, and the per-step table.

Decode rows (mode = decode) carry seq_len = L, time_per_token_ms, bytes_read, state_bytes, bytes_per_s and
pct_of_bandwidth (of the bandwidth ceiling measured at the start of the same run); bench/sweep/decode.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bench import fit
from bench.report import figures
from bench.report.analysis import crossover_text

GIB = 2.0**30


def decode_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["mode"] == "decode"] if "mode" in rows.columns else rows.iloc[:0]


def decode_figures(decode: pd.DataFrame, exponents: dict, styles: dict) -> dict:
    """Time per generated token and state bytes per sequence against L, one line per series per panel."""
    drawn = {}
    for name, value, ylabel, scale in (
        ("decode_time", "time_per_token_ms", "time per token (ms, median)", 1.0),
        ("decode_state", "state_bytes", "state per sequence (MiB)", 2.0**-20),
    ):
        figure = figures.complexity_figure(
            decode, value, ylabel, exponents if value != "state_bytes" else {}, styles, scale
        )
        for ax in figure.axes:
            ax.set_xlabel("context length L")
        drawn[name] = figure
    return drawn


def crossover_table(decode: pd.DataFrame, baseline: str, axes: Sequence[str]) -> pd.DataFrame:
    """Per bounded-state series and panel: the smallest L from which it stays ahead of the baseline's KV cache,
    in time per token and in state bytes."""
    if not len(decode):
        return pd.DataFrame()
    exact = decode.loc[decode["exact"].astype(bool), "series"].unique()
    keys = [*axes, "panel", "series"]
    frames = []
    for prefix, value in (("time_", "time_per_token_ms"), ("memory_", "state_bytes")):
        frame = fit.crossovers(decode, baseline, "series", [*axes, "panel"], value, exact)
        frames.append(frame.rename(columns={c: prefix + c for c in frame.columns if c not in keys}))
    crossing = frames[0].merge(frames[1], on=keys, how="outer")
    if not len(crossing):
        return pd.DataFrame()
    table = crossing[["panel", "series"]].copy()
    table[f"faster per token than {baseline}"] = crossover_text(crossing, "time_").str.replace("N", "L")
    table[f"smaller state than {baseline}"] = crossover_text(crossing, "memory_").str.replace("N", "L")
    return table


def step_table(decode: pd.DataFrame) -> pd.DataFrame:
    """One row per ok decode cell: per-step time, bytes read, GB/s, % of the bandwidth ceiling, state size."""
    ok = decode[decode["status"] == "ok"].sort_values(["panel", "series", "seq_len"])
    if not len(ok):
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "panel": ok["panel"],
            "series": ok["series"],
            "L": ok["seq_len"].astype(int),
            "step (ms)": ok["time_ms_median"].map(lambda v: f"{v:.3g}"),
            "per token (ms)": ok["time_per_token_ms"].map(lambda v: f"{v:.3g}"),
            "read (MiB)": (ok["bytes_read"] / 2**20).map(lambda v: f"{v:.3g}"),
            "GB/s": (ok["bytes_per_s"] / 1e9).map(lambda v: f"{v:.3g}"),
            "% of bandwidth": ok["pct_of_bandwidth"].map(lambda v: f"{v:.1f}"),
            "state/seq (MiB)": (ok["state_bytes"] / 2**20).map(lambda v: f"{v:.3g}"),
            "rel. L2 error": ok["error_rel_l2"].map(lambda v: f"{v:.2g}"),
        }
    )


def ceiling_text(decode: pd.DataFrame) -> str:
    """The bandwidth ceilings the decode rows were judged against, per run and device."""
    parts = []
    for (run, device), cells in decode.groupby(["run_id", "device"]):
        first = cells.iloc[0]
        parts.append(
            f"{run} on {device}: {first['bandwidth_bytes_per_s'] / 1e9:.3g} GB/s "
            f"(copy {first['copy_bytes_per_s'] / 1e9:.3g}, read {first['read_bytes_per_s'] / 1e9:.3g})"
        )
    return "; ".join(parts)
