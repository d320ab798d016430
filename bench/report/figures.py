"""The report's figures: complexity (log-log in N), speedup against a baseline, and accuracy against time.

Every function takes a tidy frame already labelled by the report (columns `panel`, `series`, and
for accuracy `hp_label`) and returns a matplotlib Figure; nothing here reads files or fits.
"""

from __future__ import annotations

import io
import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # headless: the report runs on servers and in CI

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import pandas as pd
import seaborn as sns

# Cells that were attempted and did not finish: drawn as marked line ends, never dropped.
FAILED_STATUSES = ("oom", "timeout", "skipped", "error")
PANEL_SIZE = (5.2, 3.9)
MAX_COLUMNS = 3
INSIDE_LEGEND_MAX = 6


def palette(names) -> dict[str, tuple]:
    """One stable colour per name (sorted), shared by every figure so a series keeps its colour."""
    names = sorted(set(names))
    colours = sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, colours, strict=True))


def png_bytes(figure) -> bytes:
    """The figure as PNG bytes; the figure is closed so long reports do not accumulate memory."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)  # layouts are already tight
    plt.close(figure)
    return buffer.getvalue()


def _grid(rows: int, columns: int, title: str):
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.8)
    figure, axes = plt.subplots(rows, columns, figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows), squeeze=False)
    figure.suptitle(textwrap.fill(title, width=int(11 * PANEL_SIZE[0] * columns)))  # ~11 characters per inch
    return figure, axes


def _panel_axes(panels: list[str], title: str):
    """A wrapped grid with one axes per panel label; unused trailing axes are hidden."""
    columns = min(MAX_COLUMNS, max(1, len(panels)))
    rows = math.ceil(max(1, len(panels)) / columns)
    figure, axes = _grid(rows, columns, title)
    flat = axes.ravel()
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    return figure, dict(zip(panels, flat, strict=False))


def _n_axis(ax, n_values) -> None:
    """Log N axis ticked at the measured sizes, its range covering every N in the panel, failures included."""
    n = np.unique(np.asarray(list(n_values), dtype=float))
    ax.set_xscale("log")
    if n.size:
        ax.set_xlim(n.min() / 1.3, n.max() * 1.3)
        ax.set_xticks(n, [str(int(v)) for v in n], rotation=45 if n.size > 6 else 0)
        ax.xaxis.set_minor_locator(ticker.NullLocator())


def _legend(ax) -> None:
    """The legend inside the axes, or beside it when it has so many entries it would hide the lines."""
    if len(ax.get_legend_handles_labels()[0]) > INSIDE_LEGEND_MAX:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7, loc="upper left")


def _failure_suffix(failed: pd.DataFrame) -> str:
    """Legend text for the cells of one series that did not finish, e.g. "; oom at N>=16384"."""
    parts = [f"{status} at N>={int(cells['seq_len'].min())}" for status, cells in failed.groupby("status")]
    return "; " + ", ".join(parts) if parts else ""


def complexity_figure(
    df: pd.DataFrame, value: str, ylabel: str, exponents: dict, colours: dict, scale: float = 1.0, title: str = ""
):
    """Log-log `value` against seq_len, one line per series and one axes per panel.

    `exponents` maps (panel, series) to the fitted exponent shown in the legend entry. Failed
    cells (FAILED_STATUSES) are drawn as an 'x' at the top of the axes at the N that failed,
    labelled with the status; unsupported cells are not drawn (the report lists them).
    """
    drawn = df[df["status"].isin(("ok", *FAILED_STATUSES))]
    panels = sorted(drawn["panel"].unique())
    figure, axes = _panel_axes(panels, title)
    for panel, ax in axes.items():
        cells = drawn[drawn["panel"] == panel]
        stacked = 0
        for series, own in cells.groupby("series", sort=True):
            ok = own[(own["status"] == "ok") & (own[value] > 0)]
            per_n = ok.groupby("seq_len")[value].median() * scale
            exponent = exponents.get((panel, series), math.nan)
            label = series + (f" (N^{exponent:.2f})" if math.isfinite(exponent) else "")
            failed = own[own["status"].isin(FAILED_STATUSES)]
            label += _failure_suffix(failed)
            if len(per_n):
                sns.lineplot(x=per_n.index, y=per_n.values, ax=ax, color=colours[series], marker="o", label=label)
            else:
                ax.plot([], [], color=colours[series], label=label)
            if len(failed):  # stacked downwards, one row per failing series, so labels do not overlap
                height = 0.96 - 0.06 * stacked
                stacked += 1
            for n, status in failed.groupby("seq_len")["status"].first().items():
                ax.scatter([n], [height], transform=ax.get_xaxis_transform(), marker="x", s=60, color=colours[series])
                ax.annotate(
                    status,
                    (n, height),
                    xycoords=ax.get_xaxis_transform(),
                    xytext=(-6, 0),
                    textcoords="offset points",
                    ha="right",
                    va="center",
                    fontsize=7,
                    color=colours[series],
                )
        ax.set(yscale="log", xlabel="N (seq_len)", ylabel=ylabel, title=panel)
        _n_axis(ax, cells["seq_len"])
        _legend(ax)
    figure.tight_layout()
    return figure


def speedup_figure(speedup: pd.DataFrame, baseline: str, colours: dict, title: str = ""):
    """time_baseline / time_impl against N, one line per series; above 1 the series is faster."""
    panels = sorted(speedup["panel"].unique())
    figure, axes = _panel_axes(panels, title)
    for panel, ax in axes.items():
        for series, own in speedup[speedup["panel"] == panel].groupby("series", sort=True):
            own = own.sort_values("seq_len")
            sns.lineplot(x=own["seq_len"], y=own["speedup"], ax=ax, color=colours[series], marker="o", label=series)
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label=f"{baseline} (=1)")
        ax.set(yscale="log", xlabel="N (seq_len)", ylabel=f"speedup vs {baseline}", title=panel)
        _n_axis(ax, speedup.loc[speedup["panel"] == panel, "seq_len"])
        _legend(ax)
    figure.tight_layout()
    return figure


def accuracy_figure(accuracy: pd.DataFrame, n_values: list[int], baseline_ms: dict, colours: dict, title: str = ""):
    """error_rel_l2 against time for approximate entries: rows are panels, columns the chosen N.

    Points of one impl are joined in hyperparameter order and labelled with their setting
    (e.g. "m=64"); a dashed vertical line marks the baseline's time, from `baseline_ms`
    keyed by (panel, N).
    """
    panels = sorted(accuracy["panel"].unique())
    figure, axes = _grid(max(1, len(panels)), max(1, len(n_values)), title)
    for row, panel in enumerate(panels):
        for column, n in enumerate(n_values):
            ax = axes[row, column]
            cells = accuracy[(accuracy["panel"] == panel) & (accuracy["seq_len"] == n)]
            for impl, own in cells.groupby("impl", sort=True):
                own = own.sort_values("hp_order")
                ax.plot(own["time_ms_median"], own["error_rel_l2"], marker="o", color=colours[impl], label=impl)
                for _, cell in own.iterrows():
                    ax.annotate(
                        cell["hp_label"],
                        (cell["time_ms_median"], cell["error_rel_l2"]),
                        xytext=(3, 3),
                        textcoords="offset points",
                        fontsize=7,
                    )
            if (panel, n) in baseline_ms:
                ax.axvline(baseline_ms[(panel, n)], color="black", linestyle="--", linewidth=1, label="baseline time")
            ax.set(xscale="log", yscale="log", xlabel="time (ms, median)", ylabel="rel. L2 error vs full")
            ax.tick_params(axis="x", which="both", labelrotation=30)
            ax.set_title(f"{panel}  N={n}" if panel else f"N={n}")
            if ax.has_data():
                ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure
