"""What a run prints while it measures and when it ends: a line (or a bar) per cell, the summary table, warnings.

On a terminal the progress is a tqdm bar; where stderr is not a terminal (a CI log, a file, SLURM's
output) it is one line per finished cell, so a log reads top to bottom instead of one long line of \\r.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pandas as pd
from tqdm import tqdm

from bench.report.style import entry_order

SUMMARY_AXES = [
    "impl", "mode", "batch", "q_heads", "kv_heads", "head_dim", "causal", "padding", "lengths", "documents", "inputs",
    "decode_tokens", "dtype", "device",
]  # fmt: skip
REASON_CHARS = 48  # a failed cell's reason in the summary, cut to this


class CellProgress:
    """A bar on a terminal, one line per finished cell elsewhere, nothing when progress=false."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.done = total, 0
        self.bar = tqdm(total=total, desc="cells", unit="cell", dynamic_ncols=True, file=self.stream) if (
            enabled and self.stream.isatty()
        ) else None  # fmt: skip
        self.lines = enabled and self.bar is None

    def finished(self, label: str, row: dict[str, Any]) -> None:
        """Count one finished cell and show it with its result."""
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(label)
            self.bar.update()
        elif self.lines:
            print(f"[{self.done}/{self.total}] {label}: {cell_result(row)}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def short_reason(reason: Any) -> str:
    text = " ".join(str(reason).split()) if isinstance(reason, str) else ""
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def cell_result(row: dict[str, Any]) -> str:
    """'1.23 ms' for a measured cell ('1.23 ms noisy' when marked), else 'status (short reason)'."""
    if row.get("status") == "ok":
        return f"{row['time_ms_median']:.3g} ms" + (" noisy" if row.get("noisy") else "")
    reason = short_reason(row.get("reason"))
    return f"{row.get('status')} ({reason})" if reason else str(row.get("status"))


def _settings(rows: pd.DataFrame) -> pd.Series:
    """Per row, the hyperparameters that vary among its impl's rows as 'name=value' ('' where none vary)."""
    parsed = rows["hparams"].map(lambda text: json.loads(text) if isinstance(text, str) and text else {})
    labels = pd.Series("", index=rows.index)
    for _, cells in rows.groupby("impl"):
        values = parsed[cells.index]
        names = sorted({name for v in values for name in v})
        varying = [n for n in names if len({json.dumps(v.get(n)) for v in values}) > 1]
        labels[cells.index] = [" ".join(f"{n}={v.get(n)}" for n in varying) for v in values]
    return labels


def summary_table(rows: pd.DataFrame) -> str:
    """impl (each peer beside its entry; every other axis that varies) x seq_len: median ms, or status (reason)."""
    axes = [a for a in SUMMARY_AXES if a == "impl" or rows[a].nunique(dropna=False) > 1]
    shown = rows.assign(value=[cell_result(row) for row in rows.to_dict("records")], hparams=_settings(rows))
    if (shown["hparams"] != "").any():  # a swept hyperparameter: only the ones that vary
        axes.insert(1, "hparams")
    shown = shown.iloc[sorted(range(len(shown)), key=lambda i: entry_order(shown["impl"].iloc[i]))]
    table = shown.pivot_table(index=axes, columns="seq_len", values="value", aggfunc="first", sort=False)
    return "median ms by seq_len (status and reason where not ok)\n" + table.fillna("").to_string()


def warn(sentences: list[str]) -> None:
    """Each warning as one line on stderr, after the summary."""
    for sentence in sentences:
        print(f"bench: warning: {sentence}", file=sys.stderr)
