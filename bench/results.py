"""The tidy results: one row per cell (schema in .helpers/SCHEMA.md), written as it finishes, and the loader.

rows.csv is appended and flushed after every cell, so killing a run loses at most the cell in
flight; rows.parquet is written from it when the run ends. The loader reads rows.csv (tolerating a
truncated last line) and merges any number of run folders and multirun sweep folders.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

import attention_zoo
from bench.cases import Cell
from bench.locks import claim_file

ROWS_CSV, ROWS_PARQUET = "rows.csv", "rows.parquet"
IDENTITY_COLUMNS = [
    "run_id", "job_id", "cell_id", "impl", "family", "exact", "mode", "batch", "q_heads", "kv_heads", "q_len",
    "kv_len", "head_dim", "causal", "padding", "dtype", "device", "seq_len", "hparams",
]  # fmt: skip
MEASURED_COLUMNS = [
    "time_complexity", "memory_complexity", "declared_time_exponent", "declared_memory_exponent",
    "status", "reason",
    "setup_ms", "time_ms_median", "time_ms_iqr", "time_ms_min", "time_ms_samples", "n_samples", "noisy",
    "peak_bytes", "predicted_bytes",
    "flops", "flops_executed", "flop_per_s", "gemm_flop_per_s", "pct_of_gemm", "pct_of_gemm_executed",
    "error_rel_l2", "error_max_abs",
    "torch_version", "device_name", "cpu_model", "threads", "git_commit", "hostname", "slurm_job_id",
    "started", "timestamp", "exclusive",
]  # fmt: skip
TEXT_COLUMNS = ["run_id", "job_id", "reason", "slurm_job_id"]  # empty means "", not missing
STATUSES = ("ok", "unsupported", "skipped", "oom", "timeout", "error")


def hparam_column(name: str) -> str:
    return f"hp_{name}"


def columns(hparam_names: Iterable[str]) -> list[str]:
    """The row's columns: identity, one hp_<name> per hyperparameter in the sweep, then everything measured."""
    return IDENTITY_COLUMNS + [hparam_column(n) for n in sorted(set(hparam_names))] + MEASURED_COLUMNS


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
        "dtype": p.dtype,
        "device": p.device,
        "seq_len": p.q_len,
        "hparams": json.dumps(dict(cell.hparams), sort_keys=True),
        **{hparam_column(name): value for name, value in cell.hparams.items()},
        "time_complexity": str(entry.time),
        "memory_complexity": str(entry.memory),
        "declared_time_exponent": entry.time.exponent,
        "declared_memory_exponent": entry.memory.exponent,
    }


def _csv_text(value: Any) -> str:
    """One CSV field: missing numbers empty (read back as NaN), lists as JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def read_rows_csv(path: Path) -> pd.DataFrame:
    """A rows.csv as a DataFrame; a last line cut short by a killed run is dropped."""
    return _rows_from_csv_text(path.read_text())


def _rows_from_csv_text(text: str) -> pd.DataFrame:
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    if not text:
        return pd.DataFrame(columns=columns([]))
    rows = pd.read_csv(io.StringIO(text), low_memory=False, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    text_columns = [c for c in TEXT_COLUMNS if c in rows.columns]  # rows written before a column existed lack it
    rows[text_columns] = rows[text_columns].fillna("")
    return rows


class RowWriter:
    """Appends one row per finished cell to rows.csv, flushed to disk; on resume it keeps the rows already there.

    The writer holds a lock on rows.csv until it is closed: a second process writing into the same
    folder fails at once instead of interleaving its rows.
    """

    def __init__(self, run_dir: Path, hparam_names: Iterable[str], keep_cell_ids: Iterable[str]) -> None:
        self.path = run_dir / ROWS_CSV
        self.columns = columns(hparam_names)
        self._file = self.path.open("a+", newline="")  # neither truncated nor written before it is locked
        claim_file(self._file, run_dir)
        self._file.seek(0)
        previous = _rows_from_csv_text(self._file.read())
        kept = previous[previous["cell_id"].isin(set(keep_cell_ids))].drop_duplicates("cell_id")
        self.done_cell_ids = set(kept["cell_id"])
        # rewrite: drops a truncated last line and takes up the current columns
        self._file.seek(0)
        self._file.truncate()
        self._csv = csv.DictWriter(self._file, fieldnames=self.columns, lineterminator="\n")
        self._csv.writeheader()
        for row in kept.to_dict("records"):
            self.append({k: v for k, v in row.items() if k in self.columns})

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row and push it to disk, so a crash right after loses nothing."""
        self._csv.writerow({key: _csv_text(value) for key, value in row.items()})
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> pd.DataFrame:
        """Finish the run: close rows.csv, write rows.parquet beside it, and return the rows."""
        rows = read_rows_csv(self.path)
        rows.to_parquet(self.path.with_name(ROWS_PARQUET), index=False)
        self._file.close()  # and with it the folder's lock, once both files are complete
        return rows


def _job_order(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def load(*run_dirs: str | Path) -> pd.DataFrame:
    """Rows of any run folders, and of every job folder inside multirun sweep folders, merged into one frame."""
    frames = []
    for run_dir in map(Path, run_dirs):
        files = (
            [run_dir / ROWS_CSV]
            if (run_dir / ROWS_CSV).exists()
            else sorted(run_dir.glob(f"*/{ROWS_CSV}"), key=_job_order)
        )
        if not files:
            raise FileNotFoundError(f"{run_dir} holds no {ROWS_CSV}, nor do its job folders")
        frames += [read_rows_csv(path) for path in files]
    return pd.concat(frames, ignore_index=True)
