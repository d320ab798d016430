"""What a sweep prints when it ends: a table of median times (or statuses) by sequence length."""

from __future__ import annotations

import pandas as pd

SUMMARY_AXES = ["impl", "mode", "batch", "q_heads", "kv_heads", "head_dim", "causal", "padding", "dtype", "device"]


def summary_table(rows: pd.DataFrame) -> str:
    """impl (and every other axis that varies) x seq_len: median ms where ok, the status otherwise."""
    axes = [a for a in SUMMARY_AXES if a == "impl" or rows[a].nunique(dropna=False) > 1]
    if (rows.groupby("impl")["hparams"].nunique() > 1).any():  # a swept hyperparameter
        axes.append("hparams")
    shown = rows.assign(
        value=[f"{ms:.3g}" if s == "ok" else s for s, ms in zip(rows["status"], rows["time_ms_median"], strict=False)]
    )
    table = shown.pivot_table(index=axes, columns="seq_len", values="value", aggfunc="first", sort=False)
    return "median ms by seq_len (status where not ok)\n" + table.fillna("").to_string()
