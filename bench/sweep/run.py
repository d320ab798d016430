"""The runner: config -> cells -> worker -> rows, with progress, a summary table and warnings at the end (console.py).

Ctrl-C stops the worker and raises RunInterrupted, whose one-line message says how many cells are
done and how to finish the run; every finished row is on disk already.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

import attention_zoo
from bench.core.cell import Cell
from bench.core.locks import timing_lock
from bench.core.memory import available_bytes
from bench.errors import BenchConfigError
from bench.report.cautions import ceiling_drift, noisy_cells
from bench.sweep import cases
from bench.sweep.budget import MEMORY_LIMIT_FRACTION, memory_limit, predict_bytes, skip_reason
from bench.sweep.console import CellProgress, summary_table, warn
from bench.sweep.environment import environment
from bench.sweep.flops import cell_bytes, with_flops
from bench.sweep.worker import Worker
from bench.sweep.writer import RowWriter, cell_columns, write_text_atomically

GEMM_TIMEOUT_S = 120.0
CONFIG_YAML, ENVIRONMENT_JSON = "config.yaml", "environment.json"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message is the one line to print."""


def nothing_measured(rows: pd.DataFrame, run_dir: Path) -> str:
    """The one line to print (the command line exits 1) when no cell of a valid config was measured, else ''."""
    if (rows["status"] == "ok").any():
        return ""
    counts = ", ".join(f"{n} {status}" for status, n in rows["status"].value_counts().items())
    return f"no cell was measured ({counts}); the reasons are in {run_dir / 'rows.csv'}"


def config_fingerprint(plain: dict[str, Any]) -> str:
    """A hash of what a config measures (resume= aside), recorded in environment.json to recognise the run's own."""
    measured = {key: value for key, value in plain.items() if key != "resume"}
    return hashlib.sha256(json.dumps(measured, sort_keys=True, default=str).encode()).hexdigest()


def _gemm_ceilings(worker: Worker, cells: list[Cell]) -> dict[tuple[str, str], float]:
    """GEMM FLOP/s once per (device, dtype) that will run; NaN where it cannot be measured."""
    ceilings = {}
    for device, dtype in sorted({(c.problem.device, c.problem.dtype) for c in cells}):
        status, value = worker.call("gemm", device, dtype, timeout_s=GEMM_TIMEOUT_S)
        ceilings[device, dtype] = value if status == "ok" else math.nan
    return ceilings


def _bandwidth_ceilings(worker: Worker, cells: list[Cell]) -> dict[str, dict[str, float]]:
    """The bandwidth ceiling (bench/sweep/bandwidth.py) once per device that runs decode cells; NaN where it fails.

    Only decode steps are judged against it, and it moves 2 GiB per sample: runs without decode skip it.
    """
    ceilings = {}
    for device in sorted({c.problem.device for c in cells}):
        status, value = worker.call("bandwidth", device, timeout_s=GEMM_TIMEOUT_S)
        ceilings[device] = value if status == "ok" else {"bandwidth_bytes_per_s": math.nan}
    return ceilings


def _device_columns(worker: Worker, cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """device_environment once per device that will run, asked in the worker; {} where it fails."""
    columns = {}
    for device in sorted({c.problem.device for c in cells}):
        status, value = worker.call("device", device, timeout_s=GEMM_TIMEOUT_S)
        columns[device] = value if status == "ok" else {}
    return columns


def _measure(cell: Cell, cfg: dict[str, Any], worker: Worker, limit_bytes: int) -> dict[str, Any]:
    """The status and measured columns of one cell: skipped here, the rest (the entry's probes too) in the worker."""
    predicted = predict_bytes(cell, attention_zoo.get(cell.impl).memory.exponent)
    status, reason = worker.call("reason", cell, timeout_s=GEMM_TIMEOUT_S)
    if status != "ok":
        return {"status": status, "reason": reason, "predicted_bytes": predicted}
    if reason:
        return {"status": "unsupported", "reason": reason, "predicted_bytes": predicted}
    reason = skip_reason(cell, predicted, limit_bytes, cfg["sweep"]["max_cell_flops"])
    if reason:
        return {"status": "skipped", "reason": reason, "predicted_bytes": predicted}
    status, value = worker.call("cell", cell, cfg["timing"], cfg["seed"], timeout_s=cfg["timing"]["cell_timeout_s"])
    measured = value if status == "ok" else {"status": status, "reason": value}
    return {**measured, "predicted_bytes": predicted}


def _now() -> str:
    """This moment in ISO 8601 with the UTC offset, so rows of machines in other time zones compare."""
    return datetime.now().astimezone().isoformat()


def _with_bytes(row: dict[str, Any], cell: Cell, bandwidth: dict[str, float]) -> dict[str, Any]:
    """Bytes moved and their rate: a decode step's bytes_read against the bandwidth ceiling; q/k/v/out bytes."""
    useful, executed = cell_bytes(cell)
    row = {**row, **bandwidth, "bytes_useful": useful, "bytes_executed": executed}
    if cell.mode != "decode":
        return row
    seconds = row.get("time_ms_median", math.nan) / 1e3
    bytes_per_s = row.get("bytes_read", math.nan) / seconds if seconds > 0 else math.nan
    return {**row, "time_per_token_ms": 1e3 * seconds / cell.problem.q_len, "bytes_per_s": bytes_per_s,
            "pct_of_bandwidth": 100 * bytes_per_s / bandwidth["bandwidth_bytes_per_s"]}  # fmt: skip


def run(cfg: DictConfig | dict[str, Any], run_dir: str | Path, run_id: str, job_id: str = "") -> pd.DataFrame:
    """Measure every cell of the config into run_dir (skipping cells already there); print a summary; return rows."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cells = cases.expand(plain)
    threads = plain["threads"] or os.cpu_count()
    worker_limit = plain["memory_limit_bytes"] or int(MEMORY_LIMIT_FRACTION * available_bytes())
    env = environment(threads)

    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise BenchConfigError(f"{run_dir} is not writable: give a folder you can write (hydra.run.dir=...)")
    # the writer claims the folder first, so a second process aimed at it fails before writing anything
    writer = RowWriter(run_dir, {n for c in cells for n in c.hparams}, {c.cell_id for c in cells})
    try:
        write_text_atomically(run_dir / CONFIG_YAML, OmegaConf.to_yaml(OmegaConf.create(plain)))
        saved = {"run_id": run_id, "job_id": job_id, "config_sha256": config_fingerprint(plain),
                 "memory_limit_bytes": worker_limit, **env}  # fmt: skip
        write_text_atomically(run_dir / ENVIRONMENT_JSON, json.dumps(saved, indent=2))
        todo = [c for c in cells if c.cell_id not in writer.done_cell_ids]
        # the lock is taken before the worker starts: its start-up (importing torch) would disturb another job's timings
        devices = {c.problem.device for c in cells}
        with (
            timing_lock(plain["timing_lock"], devices) as exclusive,
            Worker(threads, plain["imports"], worker_limit) as worker,
        ):
            ceilings = _gemm_ceilings(worker, todo)
            bandwidths = _bandwidth_ceilings(worker, [c for c in todo if c.mode == "decode"])
            device_columns = _device_columns(worker, todo)  # after the GEMM ceiling: clocks read on a warm GPU
            progress = CellProgress(len(todo), plain["progress"])
            for cell in todo:
                row = {"run_id": run_id, "job_id": job_id, **cell_columns(cell), **env, "exclusive": exclusive}
                started = _now()
                device = device_columns[cell.problem.device]
                row.update(_measure(cell, plain, worker, memory_limit(cell, worker.memory_limit_bytes, device)))
                row = with_flops(row, cell, ceilings[cell.problem.device, cell.problem.dtype])
                row = _with_bytes(row, cell, bandwidths.get(cell.problem.device, {}))
                row.update(**device, started=started, timestamp=_now())
                writer.append(row)
                progress.finished(f"{cell.impl} N={cell.problem.q_len} {cell.mode}", row)
            progress.close()
            # again at the end: a machine that slowed down (or sped up) during the run is warned about
            end_ceilings = _gemm_ceilings(worker, todo) if todo else {}
        saved["gemm_ceilings"] = [
            {"device": device, "dtype": dtype, "start_flop_per_s": start, "end_flop_per_s": end_ceilings[device, dtype]}
            for (device, dtype), start in ceilings.items()
        ]
        write_text_atomically(run_dir / ENVIRONMENT_JSON, json.dumps(saved, indent=2))
    except KeyboardInterrupt:
        # the rows on disk, not a count beside them: an interrupt between a row's write and the count's
        # increment said one cell fewer than the folder held
        done = len(writer.close())
        raise RunInterrupted(
            f"interrupted after {done} of {len(cells)} cells; finish with: python -m bench resume={run_dir}"
        ) from None
    except BaseException:
        writer.close()
        raise
    rows = writer.close()
    print(summary_table(rows))
    warn(ceiling_drift(saved["gemm_ceilings"]) + noisy_cells(rows))
    print(f"results: {run_dir}  ({len(rows)} rows; load with bench.rows.load({str(run_dir)!r}))")
    if plain["report"]:
        from bench.report.render import write_report  # plotting libraries load only when a report is written

        print(f"report: {write_report([run_dir])}")
    return rows
