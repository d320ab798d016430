"""The row schema of a sweep's results (one row per cell; every column in docs/rows.md) and the loader.

The loader reads rows.csv (tolerating a truncated last line, as a killed run leaves it) and merges
any number of run folders and multirun sweep folders; a damaged rows.csv is an error naming its bad
lines and how to keep the good rows. Torch-free: the report reads rows without the harness.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from attention_zoo.natural_sort import natural_key
from bench.errors import UserError

ROWS_CSV, ROWS_PARQUET = "rows.csv", "rows.parquet"
# recall mode's task and training budget (bench/tasks; the recall config), empty in other rows
TASK_COLUMNS = ["task", "kv_pairs", "steps", "vocab_size", "learning_rate", "layers"]
IDENTITY_COLUMNS = [
    "run_id", "job_id", "cell_id", "impl", "family", "exact", "mode", "batch", "q_heads", "kv_heads", "q_len",
    "kv_len", "head_dim", "causal", "padding", "lengths", "documents", "inputs", "decode_tokens", "dtype", "device",
    "seq_len", "hparams", *TASK_COLUMNS,
]  # fmt: skip
DEVICE_COLUMNS = [  # bench.sweep.environment.device_environment, besides device_name
    "cuda_version", "cudnn_version", "driver_version", "compute_capability", "tf32_matmul", "tf32_cudnn",
    "flash_version", "sm_clock_mhz", "max_sm_clock_mhz", "memory_clock_mhz", "gpu_memory_free_bytes", "gemm_size",
]  # fmt: skip
MEASURED_COLUMNS = [
    "time_complexity", "memory_complexity", "declared_time_exponent", "declared_memory_exponent",
    "status", "reason",
    "setup_ms", "time_ms_median", "time_ms_iqr", "time_ms_min", "time_ms_samples", "n_samples", "noisy",
    "peak_bytes", "predicted_bytes", "kernel",
    "flops", "flops_executed", "flop_per_s", "gemm_flop_per_s", "pct_of_gemm", "pct_of_gemm_executed",
    "bytes_useful", "bytes_executed",
    "time_per_token_ms", "bytes_read", "state_bytes", "bytes_per_s", "bandwidth_bytes_per_s", "pct_of_bandwidth",
    "copy_bytes_per_s", "read_bytes_per_s",
    "error_rel_l2", "error_max_abs", "error_cosine", "needle_recall",
    "accuracy", "loss_first", "loss_final", "train_s", "test_examples",
    "torch_version", "device_name", "cpu_model", "threads", "git_commit", "hostname", "slurm_job_id",
    *DEVICE_COLUMNS,
    "started", "timestamp", "exclusive",
]  # fmt: skip
# empty means "", not missing
TEXT_COLUMNS = ["run_id", "job_id", "reason", "lengths", "inputs", "task", "slurm_job_id", "kernel", "cuda_version",
                "cudnn_version", "driver_version", "compute_capability", "flash_version"]  # fmt: skip
# every row's status: measured, or why not (the entry cannot run it, predicted too big, out of memory, past its
# time limit, failed); the failed ones are drawn where they failed
STATUSES = ("ok", "unsupported", "skipped", "oom", "timeout", "error")
FAILED_STATUSES = ("oom", "timeout", "skipped", "error")


class DamagedResultsError(UserError):
    """A results file that cannot be read; the message names it and how to recover."""


class NoResultsError(UserError, FileNotFoundError):
    """A folder given as results that holds none."""


def hparam_column(name: str) -> str:
    return f"hp_{name}"


def columns(hparam_names: Iterable[str]) -> list[str]:
    """The row's columns: identity, one hp_<name> per hyperparameter in the sweep, then everything measured."""
    return IDENTITY_COLUMNS + [hparam_column(n) for n in sorted(set(hparam_names))] + MEASURED_COLUMNS


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
    # every row written before the inputs axis existed was drawn i.i.d.
    rows["inputs"] = rows["inputs"].replace("", "iid") if "inputs" in rows.columns else "iid"
    return rows


def _bad_lines(text: str) -> list[int]:
    """Line numbers of rows whose field count differs from the header's."""
    # a cell's raw samples (time_ms_samples) pass csv's default 128 KiB field limit at small N
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.reader(io.StringIO(text))
    width = len(next(reader))
    return [reader.line_num for fields in reader if len(fields) != width]


def load(*run_dirs: str | Path) -> pd.DataFrame:
    """Rows of any run folders, and of every job folder inside multirun sweep folders, merged into one frame."""
    frames = []
    for run_dir in map(Path, run_dirs):
        files = (
            [run_dir / ROWS_CSV]
            if (run_dir / ROWS_CSV).exists()
            else sorted(run_dir.glob(f"*/{ROWS_CSV}"), key=natural_key)
        )
        if not files:
            raise NoResultsError(f"{run_dir} holds no {ROWS_CSV}, nor do its job folders: give a run or sweep folder")
        frames += [read_rows_csv(path) for path in files]
    return pd.concat(frames, ignore_index=True)
