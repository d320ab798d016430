"""The tidy results: one row per cell (schema in .helpers/SCHEMA.md), written as it finishes, and the loader.

rows.csv is appended and fsynced after every cell, so killing a run loses at most the cell in
flight; rows.parquet is written from it when the run ends. Every file that is rewritten (rows.csv on
resume, rows.parquet, config.yaml, environment.json) is written whole into a temporary file in the
same folder, fsynced, and renamed over the old one: a kill at any instant leaves the old file or the
new one, never a mix or nothing. The loader reads rows.csv (tolerating a truncated last line) and
merges any number of run folders and multirun sweep folders; a damaged rows.csv is an error naming
its bad lines and how to keep the good rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

import attention_zoo
from bench.cases import Cell
from bench.errors import UserError
from bench.locks import claim_folder

ROWS_CSV, ROWS_PARQUET = "rows.csv", "rows.parquet"
IDENTITY_COLUMNS = [
    "run_id", "job_id", "cell_id", "impl", "family", "exact", "mode", "batch", "q_heads", "kv_heads", "q_len",
    "kv_len", "head_dim", "causal", "padding", "dtype", "device", "seq_len", "hparams",
]  # fmt: skip
DEVICE_COLUMNS = [  # bench.environment.device_environment, besides device_name
    "cuda_version", "cudnn_version", "driver_version", "compute_capability", "tf32_matmul", "tf32_cudnn",
    "flash_version", "sm_clock_mhz", "max_sm_clock_mhz", "memory_clock_mhz", "gpu_memory_free_bytes", "gemm_size",
]  # fmt: skip
MEASURED_COLUMNS = [
    "time_complexity", "memory_complexity", "declared_time_exponent", "declared_memory_exponent",
    "status", "reason",
    "setup_ms", "time_ms_median", "time_ms_iqr", "time_ms_min", "time_ms_samples", "n_samples", "noisy",
    "peak_bytes", "predicted_bytes", "kernel",
    "flops", "flops_executed", "flop_per_s", "gemm_flop_per_s", "pct_of_gemm", "pct_of_gemm_executed",
    "error_rel_l2", "error_max_abs",
    "torch_version", "device_name", "cpu_model", "threads", "git_commit", "hostname", "slurm_job_id",
    *DEVICE_COLUMNS,
    "started", "timestamp", "exclusive",
]  # fmt: skip
# empty means "", not missing
TEXT_COLUMNS = ["run_id", "job_id", "reason", "slurm_job_id", "kernel", "cuda_version", "cudnn_version",
                "driver_version", "compute_capability", "flash_version"]  # fmt: skip
STATUSES = ("ok", "unsupported", "skipped", "oom", "timeout", "error")
TEMPORARY_GLOB = ".*.tmp"  # what a write killed before its rename leaves behind


class DamagedResultsError(UserError):
    """A results file that cannot be read; the message names it and how to recover."""


class NoResultsError(UserError, FileNotFoundError):
    """A folder given as results that holds none."""


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
    """A rows.csv as a DataFrame; a last line cut short by a killed run is dropped; damage is a one-line error."""
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    if not text:
        return pd.DataFrame(columns=columns([]))
    bad = _bad_lines(text)
    if bad:
        shown = ", ".join(str(n) for n in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        deletes = ";".join(f"{n}d" for n in bad)
        raise DamagedResultsError(
            f"{path} is damaged: line(s) {shown} do not have the header's fields; keep the good rows by deleting "
            f"those lines (sed -i '{deletes}' {path}), then resume: only the deleted rows' cells are measured again"
        )
    rows = pd.read_csv(io.StringIO(text), low_memory=False, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    text_columns = [c for c in TEXT_COLUMNS if c in rows.columns]  # rows written before a column existed lack it
    rows[text_columns] = rows[text_columns].fillna("")
    return rows


def _bad_lines(text: str) -> list[int]:
    """Line numbers of rows whose field count differs from the header's."""
    # a cell's raw samples (time_ms_samples) pass csv's default 128 KiB field limit at small N
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.reader(io.StringIO(text))
    width = len(next(reader))
    return [reader.line_num for fields in reader if len(fields) != width]


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
            raise NoResultsError(f"{run_dir} holds no {ROWS_CSV}, nor do its job folders: give a run or sweep folder")
        frames += [read_rows_csv(path) for path in files]
    return pd.concat(frames, ignore_index=True)
