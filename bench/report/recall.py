"""The report's recall section: MQAR accuracy of the tiny model trained with each entry, against the entry's
fwd_bwd time at the model's shape, per sequence length and number of key-value pairs.

Recall rows (mode = recall) carry task, kv_pairs, steps, accuracy, loss_first, loss_final and train_s besides
the timing columns of the entry's forward and backward (bench/tasks, bench/sweep/measure.py).
"""

from __future__ import annotations

import pandas as pd

from bench.report import figures, style
from bench.report.measurements import marks

SETTING = ["seq_len", "kv_pairs"]  # one figure panel and one headline per setting


def recall_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The recall rows; none from results written before recall mode existed (they lack its columns)."""
    return rows[rows["mode"] == "recall"] if {"mode", "accuracy"} <= set(rows.columns) else rows.iloc[:0]


def _ok(recall: pd.DataFrame) -> pd.DataFrame:
    if not len(recall):
        return recall
    return recall[(recall["status"] == "ok") & recall["accuracy"].notna()]


def _setting(n: int, pairs: int) -> str:
    return f"N={int(n)}, {int(pairs)} key-value pairs"


def recall_figure(recall: pd.DataFrame, styles: dict):
    """Accuracy against time per setting, one marker per series, the frontier marked."""
    ok = _ok(recall)
    settings = list(ok.groupby(SETTING).groups)
    figure, grid = figures.panel_grid([_setting(*s) for s in settings], "", sharex=False)
    for (n, pairs), ax in zip(settings, grid.values(), strict=True):
        cells = ok[(ok["seq_len"] == n) & (ok["kv_pairs"] == pairs)]
        for series, own in cells.groupby("series", sort=False):
            colour = style.colour(own["impl"].iloc[0])
            ax.plot(own["time_ms_median"], 100 * own["accuracy"], label=series, gid=series,
                    **{**styles[series], "linestyle": "none", "color": colour, "markerfacecolor": colour})  # fmt: skip
        front = figures.frontier(cells, "accuracy", higher_is_better=True)
        figures.mark_frontier(ax, front.assign(accuracy=100 * front["accuracy"]), "accuracy")
        ax.set(xscale="log", xlabel="attention fwd_bwd time at the model's shape (ms, median)",
               ylabel="MQAR accuracy (%)", ylim=(-3, 103), title=_setting(n, pairs))  # fmt: skip
        figures.plain_log_ticks(ax.xaxis)
    figures.figure_legend(figure)
    return figure


def recall_table(recall: pd.DataFrame) -> pd.DataFrame:
    """One row per recall cell: accuracy, training losses and time, the entry's fwd_bwd time and peak memory."""
    if not len(recall):
        return pd.DataFrame()
    ordered = recall.sort_values([*SETTING, "series"])
    ok = ordered["status"] == "ok"
    return pd.DataFrame(
        {
            "N": ordered["seq_len"].astype(int),
            "kv pairs": ordered["kv_pairs"].astype(int),
            "series": ordered["series"],
            "steps": ordered["steps"].astype(int),
            "accuracy": ordered["accuracy"].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}%"),
            "loss first → final": [
                f"{a:.2f} → {b:.2f}" if is_ok else ""
                for a, b, is_ok in zip(ordered["loss_first"], ordered["loss_final"], ok, strict=True)
            ],
            "training (s)": ordered["train_s"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}"),
            "fwd_bwd (ms)": ordered["time_ms_median"].map(lambda v: "" if pd.isna(v) else f"{v:.3g}"),
            "peak (MiB)": ordered["peak_bytes"].map(lambda v: "" if pd.isna(v) else f"{v / 2**20:.3g}"),
            "status": [
                s if s == "ok" else f"{s}: {r}" for s, r in zip(ordered["status"], ordered["reason"], strict=True)
            ],
        }
    )


def recall_headlines(recall: pd.DataFrame, margin: float) -> list[dict]:
    """Per setting: the exact entries' accuracy, and the fastest approximate entry within `margin` of the best
    exact accuracy (or the most accurate approximate one, if none is)."""
    items = []
    ok = _ok(recall)
    for (n, pairs), cells in ok.groupby(SETTING) if len(ok) else []:
        line = []
        exact, approximate = cells[cells["exact"].astype(bool)], cells[~cells["exact"].astype(bool)]
        if len(exact):
            best = exact["accuracy"].max()
            ranked = exact.sort_values("accuracy", ascending=False).to_dict("records")
            line.append("exact " + ", ".join(f"{c['series']} {100 * c['accuracy']:.1f}%" for c in ranked))
            within = approximate[approximate["accuracy"] >= best - margin].sort_values("time_ms_median")
            if len(within):
                c = within.head(1).to_dict("records")[0]
                line.append(
                    f"fastest approximate within {100 * margin:.0f} points of it: {c['series']} "
                    f"{100 * c['accuracy']:.1f}% at {c['time_ms_median']:.3g} ms{marks(c)}"
                )
        if len(approximate) and not any(part.startswith("fastest") for part in line):
            c = approximate.sort_values("accuracy", ascending=False).head(1).to_dict("records")[0]
            line.append(f"best approximate: {c['series']} {100 * c['accuracy']:.1f}%")
        items.append(f"{_setting(n, pairs)}: " + "; ".join(line) + ".")
    return [{"panel": "recall (MQAR)", "items": items}] if items else []
