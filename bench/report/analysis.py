"""The report's numbers as tables and headline sentences: speedups, crossovers, accuracy, statuses.

Raw frames (speedup, accuracy, crossover_frame) keep numbers for further use; the *_table
functions turn them into frames of display strings shared by report.html and report.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench import fit
from bench.report.measurements import marks
from bench.rows import FAILED_STATUSES

ERROR_BUDGET = 0.1  # rel. L2 error against full attention an approximate entry may have to count as "within budget"
# our efficient entries and what each races in the efficiency table: the public packages and compiled
# kernels computing the same thing, and the exact baseline (causal sdpa_flash in a causal panel)
RIVALS = {
    "sliding_window": ("flex_sliding_window", "peer_local_attention", "sdpa_flash"),
    "window_global": ("flex_global", "sdpa_flash"),
    "linformer": ("peer_linformer",),
    "performer": ("peer_performer",),
    "transformer_xl": ("sdpa_flash",),
}


def _g(value: float, spec: str = ".3g") -> str:
    """A number for a table cell; missing numbers stay blank rather than printing 'nan'."""
    return "" if pd.isna(value) else format(value, spec)


def _ms(value: float) -> str:
    return f"{value:.3g} ms"


def _mib(value: float) -> str:
    return f"{value / 2**20:.3g} MiB"


def _n(value: float) -> str:
    return "" if pd.isna(value) else f"{round(value):d}"


def speedup(rows: pd.DataFrame, baseline: str, axes: Sequence[str]) -> pd.DataFrame:
    """time_baseline / time_series per (axes, series, N) over ok cells, medians of repeated cells."""
    keys = [*axes, "panel", "seq_len"]
    ok = rows[(rows["status"] == "ok") & rows["time_ms_median"].notna()]
    median = ok.groupby([*keys, "impl", "series"], dropna=False)["time_ms_median"].median().reset_index()
    base = median[median["series"] == baseline][[*keys, "time_ms_median"]].rename(columns={"time_ms_median": "base_ms"})
    paired = median[median["series"] != baseline].merge(base, on=keys)
    paired["speedup"] = paired["base_ms"] / paired["time_ms_median"]
    return paired


def speedup_table(speedup: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """One row per (axes, series), one column per N: 'x.xx×' (above 1: faster than the baseline)."""
    if not len(speedup):
        return pd.DataFrame()
    wide = speedup.pivot_table(index=[*axes, "series"], columns="seq_len", values="speedup", dropna=False)
    wide = wide.map(lambda v: "" if pd.isna(v) else f"{v:.2f}×")
    wide.columns = [f"N={n}" for n in wide.columns]
    return wide.reset_index()


def efficiency_table(rows: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Per ok cell: median ms, % of the run's GEMM rate on useful FLOPs, and for our entries in RIVALS,
    rival time / our time for each rival measured in the same cell (above 1: ours is faster)."""
    ok = rows[(rows["status"] == "ok") & rows["time_ms_median"].notna()]
    if not len(ok):
        return pd.DataFrame()
    keys = [*axes, "seq_len"]
    cells = ok.groupby([*keys, "series", "impl"], dropna=False)[["time_ms_median", "pct_of_gemm"]].median()
    cells = cells.reset_index().sort_values([*axes, "series", "seq_len"], kind="stable")
    times = {(*key, series): ms for *key, series, ms in cells[[*keys, "series", "time_ms_median"]].itertuples(False)}

    def ratios(cell) -> str:
        key = tuple(cell[k] for k in keys)
        found = [(r, times[(*key, r)]) for r in RIVALS.get(cell["impl"], ()) if (*key, r) in times]
        return "; ".join(f"{r} {ms / cell['time_ms_median']:.2f}×" for r, ms in found)

    table = cells[[*axes, "series"]].copy()
    table["N"] = cells["seq_len"].map(_n)
    table["ms"] = cells["time_ms_median"].map(_g)
    table["% of GEMM"] = cells["pct_of_gemm"].map(lambda v: _g(v, ".1f"))
    table["rival time / this time"] = cells.apply(ratios, axis=1)
    return table


def _common_n(rows: pd.DataFrame, baseline: str, keys: Sequence[str]) -> pd.DataFrame:
    """Per (keys) series: how many N both it and the baseline measured (ok), as time_points."""
    ok = rows[(rows["status"] == "ok") & rows["time_ms_median"].notna()]
    base = ok[ok["impl"] == baseline][[*keys[:-1], "seq_len"]].drop_duplicates()
    both = ok[[*keys, "impl", "seq_len"]].drop_duplicates().merge(base, on=[*keys[:-1], "seq_len"])
    return both.groupby([*keys, "impl"], dropna=False)["seq_len"].nunique().rename("time_points").reset_index()


def crossover_frame(rows: pd.DataFrame, baseline: str, axes: Sequence[str]) -> pd.DataFrame:
    """fit.crossovers in time (time_*) and in memory (memory_*) for every series but the baseline and full,
    with the impl and the number of N both measured (time_points)."""
    exclude = rows.loc[rows["impl"].isin((baseline, "full")), "series"].unique()
    keys = [*axes, "panel", "series"]
    frames = []
    for prefix, value in (("time_", "time_ms_median"), ("memory_", "peak_bytes")):
        frame = fit.crossovers(rows, baseline, "series", [*axes, "panel"], value, exclude)
        frames.append(frame.rename(columns={c: prefix + c for c in frame.columns if c not in keys}))
    merged = frames[0].merge(frames[1], on=keys, how="outer")
    return merged.merge(_common_n(rows, baseline, keys), on=keys, how="left").fillna({"time_points": 0})


def judged_fits(fitted: pd.DataFrame, rows: pd.DataFrame, value: str, groups: Sequence[str]) -> pd.DataFrame:
    """The fits with an exponent only from >= 3 distinct N (else NaN: shown as "-"), never flagged from noisy cells."""
    ok = rows[(rows["status"] == "ok") & (rows[value] > 0)]
    per_group = ok.groupby(list(groups), dropna=False).agg(
        distinct_n=("seq_len", "nunique"), any_noisy=("noisy", lambda s: bool(s.fillna(False).astype(bool).any()))
    )
    fitted = fitted.merge(per_group.reset_index(), on=list(groups), how="left")
    few = ~(fitted["distinct_n"] >= fit.ASYMPTOTIC_MIN_POINTS)
    fitted.loc[few, ["exponent", "exponent_all"]] = np.nan
    fitted["disagrees"] = fitted["disagrees"] & ~few
    fitted["noisy"] = fitted["any_noisy"].fillna(False).astype(bool) & ~few
    return fitted


def crossover_text(frame: pd.DataFrame, prefix: str) -> pd.Series:
    """'N <= N_min', 'N ≈ n', 'not in range' or 'no common N' for each crossover row."""

    def text(row) -> str:
        if pd.isna(row[prefix + "n_min"]):
            return "no common N"
        if row[prefix + "wins_at_n_min"]:
            return f"N <= {_n(row[prefix + 'n_min'])}"
        if pd.isna(row[prefix + "crossover_n"]):
            return "not in range"
        return f"N ≈ {_n(row[prefix + 'crossover_n'])}"

    return frame.apply(text, axis=1) if len(frame) else pd.Series(dtype=str)


def crossover_table(frame: pd.DataFrame, axes: Sequence[str], baseline: str) -> pd.DataFrame:
    """The crossover frame as display strings."""
    if not len(frame):
        return pd.DataFrame()
    table = frame[[*axes, "series"]].copy()
    table["faster (time crossover)"] = crossover_text(frame, "time_")
    table["less memory (memory crossover)"] = crossover_text(frame, "memory_")
    table["N range compared (time)"] = frame["time_n_min"].map(_n) + ".." + frame["time_n_max"].map(_n)
    return table


def accuracy(rows: pd.DataFrame, speedup: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Ok cells of approximate entries with their error against full attention and speedup."""
    approximate = rows[(rows["status"] == "ok") & ~rows["exact"].astype(bool) & rows["error_rel_l2"].notna()]
    keys = [*axes, "panel", "series", "seq_len"]
    return approximate.merge(speedup[[*keys, "speedup"]], on=keys, how="left")


def _hparams_text(hparams: str) -> str:
    """The resolved-hyperparameters JSON as 'name=value, ...' ('' when the entry has none)."""
    try:
        values = json.loads(hparams) if isinstance(hparams, str) and hparams else {}
    except json.JSONDecodeError:
        return hparams
    return ", ".join(f"{k}={v}" for k, v in values.items())


def accuracy_table(accuracy: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """impl, hyperparameters, N, errors, time and speedup per approximate cell."""
    if not len(accuracy):
        return pd.DataFrame()
    ordered = accuracy.sort_values([*axes, "impl", "seq_len", "hp_order"])
    table = ordered[[*axes, "impl"]].copy()
    table["hyperparameters"] = ordered["hparams"].map(_hparams_text)
    table["N"] = ordered["seq_len"].map(_n)
    table["error_rel_l2"] = ordered["error_rel_l2"].map(_g)
    table["error_max_abs"] = ordered["error_max_abs"].map(_g)
    if "error_cosine" in ordered and ordered["error_cosine"].notna().any():
        table["cosine"] = ordered["error_cosine"].map(_g)
    if "needle_recall" in ordered and ordered["needle_recall"].notna().any():  # retrieval inputs
        table["needle recall"] = ordered["needle_recall"].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}%")
    table["time (ms)"] = ordered["time_ms_median"].map(_g)
    table["speedup"] = ordered["speedup"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}×")
    return table


def exponent_table(time_fit: pd.DataFrame, memory_fit: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Per series: fitted (asymptotic) time and memory exponents beside the declared ones, with fit details."""
    keys = [*axes, "series"]
    parts = []
    for metric, fitted in (("time", time_fit), ("memory", memory_fit)):
        table = fitted[keys].copy()
        table[f"{metric} exponent"] = fitted["exponent"].map(lambda v: _g(v, ".2f") or "-")
        table[f"{metric} declared"] = fitted["declared"].map(lambda v: _g(v, ".2g"))
        table[f"{metric} check"] = np.where(
            fitted["disagrees"], np.where(fitted["noisy"], "disagrees (noisy cells)", "disagrees"), ""
        )
        table[f"{metric} fit N (points, R²)"] = (
            fitted["n_min"].map(_n) + ".." + fitted["n_max"].map(_n)
            + " (" + fitted["points"].astype(str) + ", " + fitted["r2"].map(lambda v: _g(v, ".3f")) + ")"
        )  # fmt: skip
        table[f"{metric} exponent (all points)"] = fitted["exponent_all"].map(lambda v: _g(v, ".2f"))
        parts.append(table)
    return parts[0].merge(parts[1], on=keys, how="outer").sort_values(keys, kind="stable")


def status_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Cells per impl and status."""
    if not len(rows):
        return pd.DataFrame()
    counts = pd.crosstab(rows["impl"], rows["status"], margins=True, margins_name="total")
    return counts.reset_index().astype(str)


def not_measured(rows: pd.DataFrame, axes: Sequence[str], unsupported: bool) -> pd.DataFrame:
    """Cells without a measurement, grouped by impl, status and reason, with the N values affected."""
    chosen = rows["status"] == "unsupported" if unsupported else rows["status"].isin(FAILED_STATUSES)
    cells = rows[chosen]
    if not len(cells):
        return pd.DataFrame()
    grouped = cells.groupby(["series", "status", "reason", *axes], dropna=False)["seq_len"]
    table = grouped.agg(lambda n: ", ".join(str(v) for v in sorted(set(n)))).rename("N").reset_index()
    table["cells"] = grouped.size().to_numpy()
    return table.astype(str)


def environment_columns(rows: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Per run and job, the distinct values of the environment columns recorded in its rows."""
    present = [c for c in columns if c in rows.columns]
    if not len(rows) or "run_id" not in rows.columns:
        return pd.DataFrame()
    jobs = rows.groupby(["run_id", "job_id"])  # the jobs of one multirun may have run on different machines
    return jobs[present].agg(lambda s: ", ".join(sorted({str(v) for v in s.dropna()}))).reset_index()


def concurrent_measurements(rows: pd.DataFrame) -> pd.DataFrame:
    """Pairs of jobs that measured cells on the same host at overlapping times, from the rows' start and end times.

    Found from the data, so it catches jobs that ran without the timing lock (timing_lock=null, two
    separate commands on a machine without a shared /tmp). Columns: hostname, jobs ("a" and "b"),
    cells (of either job, measured while the other measured), start and end of the overlap.
    """
    columns = ["hostname", "jobs", "cells", "start", "end"]
    if not {"started", "timestamp", "hostname"} <= set(rows.columns):
        return pd.DataFrame(columns=columns)
    # unsupported and skipped cells are decided without running anything
    measured = rows[~rows["status"].isin(("unsupported", "skipped")) & rows["started"].notna()]
    job = measured["run_id"].astype(str) + np.where(measured["job_id"] != "", "/" + measured["job_id"].astype(str), "")
    cells = pd.DataFrame(
        {
            "hostname": measured["hostname"],
            "job": job,
            "start": pd.to_datetime(measured["started"], utc=True, format="ISO8601"),
            "end": pd.to_datetime(measured["timestamp"], utc=True, format="ISO8601"),
        }
    ).sort_values(["hostname", "start"])
    overlaps: dict[tuple[str, str, str], dict] = {}
    for host, on_host in cells.groupby("hostname"):
        running: list[tuple] = []  # (end, job, index) of cells not finished when the current one starts
        for index, cell in on_host.iterrows():
            running = [r for r in running if r[0] > cell["start"]]
            for end, other_job, other_index in running:
                if other_job == cell["job"]:
                    continue
                key = (host, *sorted((other_job, cell["job"])))
                found = overlaps.setdefault(key, {"cells": set(), "start": cell["start"], "end": end})
                found["cells"] |= {index, other_index}
                found["end"] = max(found["end"], min(end, cell["end"]))
            running.append((cell["end"], cell["job"], index))
    records = [
        (host, f"{a} and {b}", len(found["cells"]), found["start"], found["end"])
        for (host, a, b), found in sorted(overlaps.items())
    ]
    return pd.DataFrame(records, columns=columns)


def _ranking(cells: pd.DataFrame, value: str, text) -> list[str]:
    """'series value' for each series of the cells, smallest median value first, noisy cells marked."""
    ordered = cells.sort_values(value).drop_duplicates("series")
    return [f"{c['series']} {text(c[value])}{marks(c)}" for c in ordered.to_dict("records")]


def _crossover_lines(here: pd.DataFrame, baseline: str) -> list[str]:
    """One line per impl that wins within range (judged from >= 3 common N), one for all that never do."""
    judged = here[here["time_points"] >= fit.ASYMPTOTIC_MIN_POINTS]
    if not len(judged):
        return []
    time_text, memory_text = crossover_text(judged, "time_"), crossover_text(judged, "memory_")
    neither = (time_text == "not in range") & (memory_text == "not in range")
    lines = {}
    for series, impl, time, memory in zip(
        judged["series"][~neither], judged["impl"][~neither], time_text[~neither], memory_text[~neither], strict=True
    ):
        lines.setdefault(impl, []).append(f"{series} vs {baseline}: faster from {time}, less memory from {memory}")
    items = ["; ".join(parts) + "." for parts in lines.values()]
    if neither.any():  # one line for the many entries that never win, instead of one each
        names = ", ".join(judged["series"][neither])
        items.append(f"Neither faster nor smaller than {baseline} within the measured N: {names}.")
    return items


def _recall_text(cell: dict) -> str:
    """', found N% of needles' for a cell measured on retrieval inputs, else ''."""
    recall = cell.get("needle_recall", math.nan)
    return "" if pd.isna(recall) else f", found {100 * recall:.0f}% of needles"


def headlines(rows: pd.DataFrame, crossing: pd.DataFrame, error_budget: float, baseline: str) -> list[dict]:
    """Per panel, at the largest N: fastest exact, fastest approximate within the error budget, least memory;
    crossovers (only from >= 3 N), and the series that did not finish there."""
    sections = []
    ok = rows[(rows["status"] == "ok") & rows["time_ms_median"].notna()]
    for panel, cells in ok.groupby("panel", sort=False):
        n = int(cells["seq_len"].max())
        at_n = cells[cells["seq_len"] == n]
        exact = at_n[at_n["exact"].astype(bool)]
        within = at_n[~at_n["exact"].astype(bool) & (at_n["error_rel_l2"] <= error_budget)]
        items = []
        if len(exact):
            items.append(f"Fastest exact at N={n}: " + ", ".join(_ranking(exact, "time_ms_median", _ms)[:4]) + ".")
        approximate = at_n[~at_n["exact"].astype(bool)]
        if len(within):
            ranked = within.sort_values("time_ms_median").drop_duplicates("series").head(3)
            parts = [f"{c['series']} {_ms(c['time_ms_median'])}{marks(c)} (error {_g(c['error_rel_l2'])}"
                     f"{_recall_text(c)})" for c in ranked.to_dict("records")]  # fmt: skip
            items.append(
                f"Fastest approximate with rel. L2 error <= {error_budget:g} at N={n}: " + ", ".join(parts) + "."
            )
        elif len(approximate):
            closest = approximate.sort_values("error_rel_l2").iloc[0]
            items.append(
                f"No approximate entry is within rel. L2 error {error_budget:g} at N={n} "
                f"(the closest: {closest['series']}, {_g(closest['error_rel_l2'])}{_recall_text(closest)})."
            )
        finders = approximate[approximate["needle_recall"].notna()] if "needle_recall" in approximate else []
        if len(finders):  # retrieval inputs: who found the needles
            ranked = finders.sort_values("needle_recall", ascending=False).drop_duplicates("series").head(3)
            items.append(
                f"Most needles found by an approximate entry at N={n}: "
                + ", ".join(f"{c['series']} {100 * c['needle_recall']:.0f}%" for c in ranked.to_dict("records"))
                + "."
            )
        memory = [
            (what, part[part["peak_bytes"].notna()]) for what, part in (("exact", exact), ("approximate", within))
        ]
        parts = [f"{what}: {_ranking(part, 'peak_bytes', _mib)[0]}" for what, part in memory if len(part)]
        if parts:
            items.append(f"Least peak memory at N={n}: " + "; ".join(parts) + ".")
        items += _crossover_lines(crossing[crossing["panel"] == panel], baseline)
        failed = rows[(rows["panel"] == panel) & rows["status"].isin(FAILED_STATUSES) & (rows["seq_len"] == n)]
        if len(failed):
            items.append(
                f"Did not finish at N={n}: "
                + ", ".join(f"{s} ({st})" for s, st in zip(failed["series"], failed["status"], strict=True)) + "."
            )  # fmt: skip
        sections.append({"panel": panel or "all cells", "items": items})
    return sections
