"""The runner: config -> cells -> worker -> rows, with a progress bar and a summary table at the end.

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
from tqdm import tqdm

import attention_zoo
from bench.core.cell import Cell
from bench.core.locks import timing_lock
from bench.core.memory import available_bytes
from bench.errors import BenchConfigError
from bench.sweep import cases
from bench.sweep.budget import MEMORY_LIMIT_FRACTION, memory_limit, predict_bytes
from bench.sweep.environment import environment
from bench.sweep.flops import cell_flops, cell_flops_executed
from bench.sweep.worker import Worker
from bench.sweep.writer import RowWriter, cell_columns, write_text_atomically

GEMM_TIMEOUT_S = 120.0
SUMMARY_AXES = ["impl", "mode", "batch", "q_heads", "kv_heads", "head_dim", "causal", "padding", "dtype", "device"]
CONFIG_YAML, ENVIRONMENT_JSON = "config.yaml", "environment.json"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message is the one line to print."""


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
    if predicted > limit_bytes:
        limit = limit_bytes
        reason = f"predicted {predicted / 2**30:.1f} GiB exceeds the memory limit {limit / 2**30:.1f} GiB"
        return {"status": "skipped", "reason": reason, "predicted_bytes": predicted}
    max_flops = cfg["sweep"]["max_cell_flops"]
    if max_flops is not None and cell_flops(cell) > max_flops:
        reason = f"{cell_flops(cell):.3g} FLOPs exceed sweep.max_cell_flops={max_flops:.3g}"
        return {"status": "skipped", "reason": reason, "predicted_bytes": predicted}
    status, value = worker.call("cell", cell, cfg["timing"], cfg["seed"], timeout_s=cfg["timing"]["cell_timeout_s"])
    measured = value if status == "ok" else {"status": status, "reason": value}
    return {**measured, "predicted_bytes": predicted}


def _now() -> str:
    """This moment in ISO 8601 with the UTC offset, so rows of machines in other time zones compare."""
    return datetime.now().astimezone().isoformat()


def _with_flops(row: dict[str, Any], cell: Cell, gemm_flop_per_s: float) -> dict[str, Any]:
    """FLOP/s and % of GEMM on useful flops; pct_of_gemm_executed on what the entry executes (waste included)."""
    flops, flops_executed = cell_flops(cell), cell_flops_executed(cell)
    seconds = row.get("time_ms_median", math.nan) / 1e3
    flop_per_s = flops / seconds if seconds > 0 else math.nan
    executed_per_s = flops_executed / seconds if seconds > 0 else math.nan
    return {**row, "flops": flops, "flops_executed": flops_executed, "flop_per_s": flop_per_s,
            "gemm_flop_per_s": gemm_flop_per_s, "pct_of_gemm": 100 * flop_per_s / gemm_flop_per_s,
            "pct_of_gemm_executed": 100 * executed_per_s / gemm_flop_per_s}  # fmt: skip


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
    done = len(writer.done_cell_ids)
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
            device_columns = _device_columns(worker, todo)  # after the GEMM ceiling: clocks read on a warm GPU
            progress = tqdm(todo, desc="cells", unit="cell", disable=not plain["progress"], dynamic_ncols=True)
            for cell in progress:
                progress.set_postfix_str(f"{cell.impl} N={cell.problem.q_len} {cell.mode}")
                row = {"run_id": run_id, "job_id": job_id, **cell_columns(cell), **env, "exclusive": exclusive}
                started = _now()
                device = device_columns[cell.problem.device]
                row.update(_measure(cell, plain, worker, memory_limit(cell, worker.memory_limit_bytes, device)))
                row = _with_flops(row, cell, ceilings[cell.problem.device, cell.problem.dtype])
                row.update(**device, started=started, timestamp=_now())
                writer.append(row)
                done += 1
    except KeyboardInterrupt:
        writer.close()
        raise RunInterrupted(
            f"interrupted after {done} of {len(cells)} cells; finish with: python -m bench resume={run_dir}"
        ) from None
    except BaseException:
        writer.close()
        raise
    rows = writer.close()
    print(summary_table(rows))
    print(f"results: {run_dir}  ({len(rows)} rows; load with bench.rows.load({str(run_dir)!r}))")
    if plain["report"]:
        from bench.report.render import write_report  # plotting libraries load only when a report is written

        print(f"report: {write_report([run_dir])}")
    return rows
