"""`python -m bench.report A --compare B`: two runs of one grid side by side, cell by cell, rather than pooled.

Each cell (impl, hyperparameters, problem, mode, N) measured ok in both runs gets its median and IQR in
A and in B, the change B/A - 1, and a verdict: "within noise" where the two medians are no further apart
than the larger of the two IQRs (the spread either run saw), else faster or slower. Cells only one run
has are listed with their status.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.report import measurements
from bench.report.render import AXES, _markdown_table, label_rows

KEYS = ["series", *[a for a in AXES if a not in ("device_name",)], "seq_len"]
COMPARE_MD = "compare.md"


def compare_frame(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """One row per cell of either run: both medians with their IQR and marks, the change, and a verdict."""
    sides = []
    for rows, side in ((before, "A"), (after, "B")):
        labelled = label_rows(rows)
        keys = [k for k in KEYS if k in labelled.columns]
        cells = labelled.groupby(keys, dropna=False, sort=False).first().reset_index()
        cells[f"{side}_marks"] = [measurements.marks(c) for c in cells.to_dict("records")]
        sides.append(
            cells[[*keys, "status", "time_ms_median", "time_ms_iqr", f"{side}_marks"]].rename(
                columns={"status": f"{side}_status", "time_ms_median": f"{side}_ms", "time_ms_iqr": f"{side}_iqr"}
            )
        )
    keys = [k for k in KEYS if k in sides[0].columns and k in sides[1].columns]
    both = sides[0].merge(sides[1], on=keys, how="outer")
    both["change"] = both["B_ms"] / both["A_ms"] - 1
    apart = (both["B_ms"] - both["A_ms"]).abs()
    noise = both[["A_iqr", "B_iqr"]].max(axis=1)
    both["verdict"] = [
        "within noise" if gap <= spread else ("faster" if change < 0 else "slower") if pd.notna(change) else ""
        for gap, spread, change in zip(apart, noise, both["change"], strict=True)
    ]
    return both


def _side(ms: float, iqr: float, marks: object, status: object) -> str:
    if pd.isna(ms):
        return "" if pd.isna(status) else str(status)
    return f"{ms:.3g} (IQR {iqr:.2g})" + ("" if pd.isna(marks) else str(marks))


def compare_table(both: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """The comparison as display strings: the keys that vary, A and B, change and verdict."""
    table = both[["series", *varying, "seq_len"]].rename(columns={"seq_len": "N"}).copy()
    for side in ("A", "B"):
        table[f"{side} ms"] = [
            _side(*values)
            for values in zip(both[f"{side}_ms"], both[f"{side}_iqr"], both[f"{side}_marks"], both[f"{side}_status"],
                              strict=True)
        ]  # fmt: skip
    table["change"] = both["change"].map(lambda v: "" if pd.isna(v) else f"{100 * v:+.0f}%")
    table["verdict"] = both["verdict"]
    return table.astype(str)


def write_compare(before: pd.DataFrame, after: pd.DataFrame, names: tuple[str, str], out_dir: Path) -> str:
    """The comparison as text for the terminal; also written as compare.md into out_dir. Returns the text."""
    both = compare_frame(before, after)
    varying = [k for k in KEYS[1:-1] if k in both.columns and both[k].nunique(dropna=False) > 1]
    table = compare_table(both, varying)
    counts = both["verdict"].value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in ("faster", "slower", "within noise"))
    header = (
        f"A = {names[0]}, B = {names[1]}: median ms (IQR) per cell, change B/A - 1; "
        f"'within noise' where |B - A| <= the larger IQR; * noisy, † few samples.\n{summary}."
    )
    (out_dir / COMPARE_MD).write_text(f"# Before / after\n\n{header}\n\n{_markdown_table(table)}\n")
    return header + "\n" + table.to_string(index=False)
