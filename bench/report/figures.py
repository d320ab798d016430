"""The report's figures: complexity (log-log in N), FLOP/s against the run's ceiling, speedup, accuracy against time.

Every function takes a tidy frame already labelled by the report (columns `panel`, `series`, `impl`,
`family`, `exact`, and for accuracy `hp_label`) and returns a matplotlib Figure; nothing here reads files
or fits. Styles come from style.py (one colour per entry in every figure); each line carries its series as
its gid, so `drawn_colours` can read back from a figure which colour each series got.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # headless: the report runs on servers and in CI

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import pandas as pd

from bench.report import style
from bench.rows import FAILED_STATUSES

# Cells that were attempted and did not finish: drawn as marked line ends, never dropped.
WIDTH_IN, PANEL_HEIGHT_IN, DPI = 14.0, 4.6, 100  # 1400 px: the width of the report's page
MAX_COLUMNS = 2
FONT_PT = 11
SPEEDUP_TICKS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


def png_bytes(figure) -> bytes:
    """The figure as PNG bytes; the figure is closed so long reports do not accumulate memory."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()


def drawn_colours(figure) -> dict[str, str]:
    """Series -> '#rrggbb' of every line drawn in the figure, read from its artists."""
    colours = {}
    for ax in figure.axes:
        for line in ax.get_lines():
            if line.get_gid():
                colours[line.get_gid()] = mcolors.to_hex(line.get_color())
    return colours


def series_styles(rows: pd.DataFrame) -> dict[str, dict]:
    """Per series: colour, line style (exact solid, approximate dashed), marker (by family; hollow for a peer)."""
    styles = {}
    for impl, own in rows.groupby("impl"):
        settings = own.drop_duplicates("series").sort_values("hp_order")
        for setting, cell in enumerate(settings.itertuples(index=False)):
            colour = style.series_colour(impl, setting, len(settings))
            styles[cell.series] = {
                "color": colour,
                "linestyle": "-" if bool(cell.exact) else "--",
                "marker": style.marker(cell.family),
                "markerfacecolor": "white" if style.is_peer(impl) else colour,
                "markersize": 6,
                "linewidth": 1.8,
            }
    return styles


def _in_order(frame: pd.DataFrame):
    """(series, cells) in the report's order: each peer beside its entry, settings by value."""
    key = frame["impl"].map(style.entry_order).tolist()
    order = sorted(range(len(frame)), key=lambda i: (key[i], frame["hp_order"].iloc[i] if "hp_order" in frame else 0))
    return frame.iloc[order].groupby("series", sort=False)


def panel_grid(panels: list[str], title: str, columns: int | None = None, rows: int | None = None, sharex=True):
    """A full-width grid of axes sharing y (and x), one per panel; the legend goes outside, on the right."""
    plt.rcParams.update({"font.size": FONT_PT, "axes.titlesize": FONT_PT + 1, "legend.fontsize": FONT_PT - 1})
    columns = columns or min(MAX_COLUMNS, max(1, len(panels)))
    rows = rows or math.ceil(max(1, len(panels)) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(WIDTH_IN, PANEL_HEIGHT_IN * rows), squeeze=False, sharey=True, sharex=sharex,
        layout="constrained",
    )  # fmt: skip
    if title:
        figure.suptitle(title)
    flat = axes.ravel()
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for ax in flat:
        ax.grid(True, which="major", color="#dddddd")
    return figure, dict(zip(panels, flat, strict=False))


def figure_legend(figure) -> None:
    """One legend for the figure, outside the data on the right; each label once."""
    seen = {}
    for ax in figure.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        figure.legend(seen.values(), seen.keys(), loc="outside right upper", frameon=False)


def _n_axis(ax, n_values) -> None:
    """Log N axis ticked at the measured sizes."""
    n = np.unique(np.asarray(list(n_values), dtype=float))
    ax.set_xscale("log")
    if n.size:
        ax.set_xlim(n.min() / 1.3, n.max() * 1.3)
        ax.set_xticks(n, [str(int(v)) for v in n])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("N (seq_len)")


def _guides(ax, per_series: list[pd.Series]) -> None:
    """Grey N^1 and N^2 lines through the lowest curve's value at its smallest N: slopes to read the curves by."""
    starts = [s for s in per_series if len(s) > 1]
    if not starts:
        return
    n = np.array(sorted({v for s in starts for v in s.index}), dtype=float)
    lowest = min(starts, key=lambda s: s.iloc[0])
    n0, y0 = float(lowest.index[0]), float(lowest.iloc[0])
    for power, dash in ((1, (1, 2)), (2, (4, 2))):
        guide = n[n >= n0]
        ax.plot(guide, y0 * (guide / n0) ** power, color="#999999", linewidth=1, dashes=dash, label=f"∝ N^{power}")


def complexity_figure(rows: pd.DataFrame, value: str, ylabel: str, exponents: dict, styles: dict, scale: float = 1.0):
    """Log-log `value` against seq_len, one line per series and one axes per panel, with N^1 and N^2 guides.

    `exponents` maps (panel, series) to the fitted exponent; the legend shows each series once, with its
    exponent in every panel, left to right ("-" with fewer than 3 N).
    Failed cells (FAILED_STATUSES) are an 'x' at the top of the axes at the N that failed, with the status.
    """
    drawn = rows[rows["status"].isin(("ok", *FAILED_STATUSES))]
    panels = list(dict.fromkeys(drawn["panel"]))  # in the report's panel order
    figure, axes = panel_grid(panels, "")
    for panel, ax in axes.items():
        cells = drawn[drawn["panel"] == panel]
        curves, stacked = [], 0
        for series, own in _in_order(cells):
            ok = own[(own["status"] == "ok") & (own[value] > 0)]
            per_n = ok.groupby("seq_len")[value].median() * scale
            fitted = [exponents.get((p, series), math.nan) for p in panels]
            label = f"{series} (" + ", ".join(f"N^{e:.2f}" if math.isfinite(e) else "N^-" for e in fitted) + ")"
            if len(per_n):
                ax.plot(per_n.index, per_n.values, label=label, gid=series, **styles[series])
                curves.append(per_n)
            failed = own[own["status"].isin(FAILED_STATUSES)].groupby("seq_len")["status"].first()
            height = 0.96 - 0.06 * stacked
            stacked += bool(len(failed))
            for n, status in failed.items():  # stacked downwards, one row per failing series
                colour = styles[series]["color"]
                ax.scatter([n], [height], transform=ax.get_xaxis_transform(), marker="x", s=50, color=colour)
                ax.annotate(status, (n, height), xycoords=ax.get_xaxis_transform(), xytext=(-6, 0), ha="right",
                            textcoords="offset points", va="center", fontsize=FONT_PT - 2, color=colour)  # fmt: skip
        _guides(ax, curves)
        ax.set_yscale("log")
        ax.set(ylabel=ylabel, title=panel or None)
        _n_axis(ax, cells["seq_len"])
    figure_legend(figure)
    return figure


def throughput_figure(rows: pd.DataFrame, styles: dict):
    """FLOP/s (useful FLOPs) against N per series, with the run's GEMM ceiling as a line: how close each gets."""
    ok = rows[(rows["status"] == "ok") & (rows["flop_per_s"] > 0)]
    panels = list(dict.fromkeys(ok["panel"]))
    figure, axes = panel_grid(panels, "")
    for panel, ax in axes.items():
        cells = ok[ok["panel"] == panel]
        for series, own in _in_order(cells):
            per_n = own.groupby("seq_len")["flop_per_s"].median() / 1e9
            ax.plot(per_n.index, per_n.values, label=series, gid=series, **styles[series])
        ceiling = cells["gemm_flop_per_s"].median() / 1e9
        if ceiling > 0:
            ax.axhline(ceiling, color="black", linewidth=1.2, label="GEMM ceiling (this run)")
        ax.set_yscale("log")
        ax.set(ylabel="GFLOP/s (useful)", title=panel or None)
        _n_axis(ax, cells["seq_len"])
    figure_legend(figure)
    return figure


def _times_ticks(ax, values: pd.Series) -> None:
    """Speedup ticks as people write them, 0.25× .. 8×, over the range the data needs."""
    low, high = float(values.min()), float(values.max())
    ticks = [t for t in SPEEDUP_TICKS if low / 2.1 <= t <= high * 2.1] or [1]
    ax.set_yscale("log", base=2)
    ax.set_yticks(ticks, [f"{t:g}×" for t in ticks])
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.set_ylim(min(ticks[0], low / 1.2), max(ticks[-1], high * 1.2))


def speedup_figure(speedup: pd.DataFrame, baseline: str, styles: dict):
    """time_baseline / time_impl against N, one line per series; above 1× the series is faster."""
    panels = list(dict.fromkeys(speedup["panel"]))
    figure, axes = panel_grid(panels, "")
    for panel, ax in axes.items():
        for series, own in _in_order(speedup[speedup["panel"] == panel]):
            own = own.sort_values("seq_len")
            ax.plot(own["seq_len"], own["speedup"], label=series, gid=series, **styles[series])
        ax.axhline(1.0, color="black", linewidth=1.2, label=f"{baseline} (1×)")
        _times_ticks(ax, speedup["speedup"])
        ax.set(ylabel=f"speedup vs {baseline}", title=panel or None)
        _n_axis(ax, speedup.loc[speedup["panel"] == panel, "seq_len"])
    figure_legend(figure)
    return figure


def plain_log_ticks(axis) -> None:
    """Major ticks of a log axis as plain numbers, minor ones unlabelled (their labels overlap on short ranges)."""
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def frontier(cells: pd.DataFrame, value: str = "error_rel_l2", higher_is_better: bool = False) -> pd.DataFrame:
    """The Pareto frontier of (time, value): cells no other cell beats on both, fastest first."""
    ordered = cells[cells["time_ms_median"].notna() & cells[value].notna()]
    cost = -ordered[value] if higher_is_better else ordered[value]
    ordered = ordered.assign(_cost=cost).sort_values(["time_ms_median", "_cost"])
    best_faster = ordered["_cost"].cummin().shift(fill_value=math.inf)  # the best value among the faster cells
    return ordered[ordered["_cost"] < best_faster].drop(columns="_cost")


def mark_frontier(ax, front: pd.DataFrame, value: str) -> None:
    """The frontier as grey dotted steps through circled points."""
    if len(front):
        ax.step(front["time_ms_median"], front[value], where="post", color="grey", linestyle=":", linewidth=2,
                zorder=0, label="frontier")  # fmt: skip
        ax.scatter(front["time_ms_median"], front[value], s=140, facecolors="none", edgecolors="grey")


def accuracy_figure(accuracy: pd.DataFrame, n_values: list[int], baseline_ms: dict, styles: dict):
    """error_rel_l2 against time for approximate entries: rows are panels, columns the chosen N.

    Points of one impl are joined in hyperparameter order (by value) and labelled with their setting
    ("m=64"), alternately above and below the line so neighbours do not overlap; a black vertical line
    marks the baseline's time, from `baseline_ms` keyed by (panel, N).
    """
    panels = list(dict.fromkeys(accuracy["panel"]))
    figure, grid = panel_grid([(p, n) for p in panels for n in n_values], "", len(n_values), len(panels), sharex=False)
    for (panel, n), ax in grid.items():
        cells = accuracy[(accuracy["panel"] == panel) & (accuracy["seq_len"] == n)]
        for impl, own in cells.groupby("impl", sort=False):
            own = own.sort_values("hp_order")
            first = styles[own["series"].iloc[0]]
            ax.plot(own["time_ms_median"], own["error_rel_l2"], label=impl, gid=impl,
                    **{**first, "color": style.colour(impl), "markerfacecolor": style.colour(impl)})  # fmt: skip
            for i, cell in enumerate(own.itertuples(index=False)):
                ax.annotate(cell.hp_label, (cell.time_ms_median, cell.error_rel_l2), xytext=(4, 5 if i % 2 else -11),
                            textcoords="offset points", fontsize=FONT_PT - 3, color=style.colour(impl))  # fmt: skip
        mark_frontier(ax, frontier(cells), "error_rel_l2")
        if (panel, n) in baseline_ms:
            ax.axvline(baseline_ms[(panel, n)], color="black", linewidth=1.2, label="baseline time")
        ax.set(xscale="log", yscale="log", xlabel="time (ms, median)", ylabel="rel. L2 error vs full")
        plain_log_ticks(ax.xaxis)
        ax.set_title(f"{panel}  N={n}" if panel else f"N={n}")
    figure_legend(figure)
    return figure
