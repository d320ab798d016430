"""Writing a sweep's rows: one row per finished cell, appended and fsynced, and files replaced whole.

rows.csv is appended and fsynced after every cell, so killing a run loses at most the cell in
flight; rows.parquet is written from it when the run ends. Every file that is rewritten (rows.csv on
resume, rows.parquet, config.yaml, environment.json) is written whole into a temporary file in the
same folder, fsynced, and renamed over the old one: a kill at any instant leaves the old file or the
new one, never a mix or nothing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

import attention_zoo
from bench.core.cell import Cell
from bench.core.locks import claim_folder
from bench.rows import ROWS_CSV, ROWS_PARQUET, STATUSES, TASK_COLUMNS, columns, hparam_column, read_rows_csv

TEMPORARY_GLOB = ".*.tmp"  # what a write killed before its rename leaves behind


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file whole or not at all: `write(temporary)` in the same folder, fsync, rename over `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    with temporary.open("rb") as written:
        os.fsync(written.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)  # the rename itself reaches the disk
    finally:
        os.close(folder)


def write_text_atomically(path: Path, text: str) -> None:
    replace_atomically(path, lambda temporary: temporary.write_text(text))


def cell_columns(cell: Cell) -> dict[str, Any]:
    """The identity and declared columns of a cell's row, known before it runs."""
    entry, p = attention_zoo.get(cell.impl), cell.problem
    return {
        "cell_id": cell.cell_id,
        "impl": cell.impl,
        "family": entry.family,
        "exact": entry.exact,
        "mode": cell.mode,
        "batch": p.batch,
        "q_heads": p.q_heads,
        "kv_heads": p.kv_heads,
        "q_len": p.q_len,
        "kv_len": p.kv_len,
        "head_dim": p.head_dim,
        "causal": p.causal,
        "padding": cell.padding,
        "lengths": cell.lengths,
        "documents": len(p.doc_lens) if p.doc_lens else 1,
        "inputs": cell.inputs,
        "decode_tokens": p.q_len if cell.mode == "decode" else None,
        **{column: (cell.task or {}).get(column) for column in TASK_COLUMNS},
        "dtype": p.dtype,
        "device": p.device,
        "seq_len": cell.seq_len,
        "hparams": json.dumps(dict(cell.hparams), sort_keys=True),
        **{hparam_column(name): value for name, value in cell.hparams.items()},
        **(_decode_complexity(entry) if cell.mode == "decode" else _declared_complexity(entry)),
    }


def _declared_complexity(entry: attention_zoo.Entry) -> dict[str, Any]:
    return {
        "time_complexity": str(entry.time),
        "memory_complexity": str(entry.memory),
        "declared_time_exponent": entry.time.exponent,
        "declared_memory_exponent": entry.memory.exponent,
    }


def _decode_complexity(entry: attention_zoo.Entry) -> dict[str, Any]:
    """A step's growth in the context length (N = L in decode rows): an exact KV cache is read whole, O(N);
    bounded states (window, memory, recurrent sums) are O(1)."""
    grows = 1.0 if entry.exact else 0.0
    return {"time_complexity": "O(N)" if grows else "O(1)", "memory_complexity": "O(N)" if grows else "O(1)",
            "declared_time_exponent": grows, "declared_memory_exponent": grows}  # fmt: skip


def _csv_text(value: Any) -> str:
    """One CSV field: missing numbers empty (read back as NaN), lists as JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def _csv_lines(rows: Iterable[Mapping[str, Any]], fieldnames: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _csv_text(value) for key, value in row.items() if key in fieldnames} for row in rows)
    return out.getvalue()


class RowWriter:
    """Appends one row per finished cell to rows.csv, fsynced; on resume it keeps the rows already there.

    The writer holds a lock on the folder until it is closed: a second process writing into the same
    folder fails at once instead of interleaving its rows.
    """

    def __init__(self, run_dir: Path, hparam_names: Iterable[str], keep_cell_ids: Iterable[str]) -> None:
        self.path = run_dir / ROWS_CSV
        self.columns = columns(hparam_names)
        self._claim = claim_folder(run_dir)
        try:
            for leftover in run_dir.glob(TEMPORARY_GLOB):  # of a write killed before its rename; ours now
                leftover.unlink()
            previous = read_rows_csv(self.path) if self.path.exists() else pd.DataFrame(columns=self.columns)
            kept = previous[previous["cell_id"].isin(set(keep_cell_ids))].drop_duplicates("cell_id")
            self.done_cell_ids = set(kept["cell_id"])
            # rewritten whole (a truncated last line dropped, the current columns taken up), then renamed over it
            write_text_atomically(self.path, _csv_lines(kept.to_dict("records"), self.columns))
            self._file = self.path.open("a", newline="")
        except BaseException:
            os.close(self._claim)
            raise
        self._csv = csv.DictWriter(self._file, fieldnames=self.columns, lineterminator="\n")

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row and push it to disk, so a crash right after loses nothing."""
        if row["status"] not in STATUSES:
            raise ValueError(f"row status {row['status']!r} is none of {STATUSES}")
        self._csv.writerow({key: _csv_text(value) for key, value in row.items()})
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> pd.DataFrame:
        """Finish the run: close rows.csv, write rows.parquet beside it, and return the rows."""
        self._file.close()
        try:
            rows = read_rows_csv(self.path)
            replace_atomically(
                self.path.with_name(ROWS_PARQUET), lambda temporary: rows.to_parquet(temporary, index=False)
            )
        finally:
            os.close(self._claim)  # the folder's lock, once both files are complete
        return rows
