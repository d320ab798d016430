"""The runner: config -> cells -> worker -> rows, with a progress bar and a summary table at the end."""

from __future__ import annotations

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
from bench import cases, results
from bench.environment import device_name, environment
from bench.flops import cell_flops, cell_flops_executed
from bench.locks import timing_lock
from bench.memory import available_bytes, predict_bytes
from bench.worker import Worker

MEMORY_LIMIT_FRACTION = 0.9  # default worker RSS limit, as a fraction of MemAvailable at start
GEMM_TIMEOUT_S = 120.0
SUMMARY_AXES = ["impl", "mode", "batch", "q_heads", "kv_heads", "head_dim", "causal", "padding", "dtype", "device"]


def _gemm_ceilings(worker: Worker, cells: list[cases.Cell]) -> dict[tuple[str, str], float]:
    """GEMM FLOP/s once per (device, dtype) that will run; NaN where it cannot be measured."""
    ceilings = {}
    for device, dtype in sorted({(c.problem.device, c.problem.dtype) for c in cells}):
        status, value = worker.call("gemm", device, dtype, timeout_s=GEMM_TIMEOUT_S)
        ceilings[device, dtype] = value if status == "ok" else math.nan
    return ceilings


def _measure(cell: cases.Cell, cfg: dict[str, Any], worker: Worker) -> dict[str, Any]:
    """The status and measured columns of one cell: unsupported or skipped here, everything else in the worker."""
    predicted = predict_bytes(cell, attention_zoo.get(cell.impl).memory.exponent)
    reason = cases.unsupported_reason(cell)
    if reason:
        return {"status": "unsupported", "reason": reason, "predicted_bytes": predicted}
    if predicted > worker.memory_limit_bytes:
        limit = worker.memory_limit_bytes
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


def _with_flops(row: dict[str, Any], cell: cases.Cell, gemm_flop_per_s: float) -> dict[str, Any]:
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
    memory_limit = plain["memory_limit_bytes"] or int(MEMORY_LIMIT_FRACTION * available_bytes())
    env = environment(threads)

    # the writer claims the folder first, so a second process aimed at it fails before writing anything
    writer = results.RowWriter(run_dir, {n for c in cells for n in c.hparams}, {c.cell_id for c in cells})
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(plain)))
    (run_dir / "environment.json").write_text(
        json.dumps({"run_id": run_id, "job_id": job_id, "memory_limit_bytes": memory_limit, **env}, indent=2)
    )
    todo = [c for c in cells if c.cell_id not in writer.done_cell_ids]

    # the lock is taken before the worker starts: its start-up (importing torch) would disturb another job's timings
    with timing_lock(plain["timing_lock"]) as exclusive, Worker(threads, plain["imports"], memory_limit) as worker:
        ceilings = _gemm_ceilings(worker, todo)
        progress = tqdm(todo, desc="cells", unit="cell", disable=not plain["progress"], dynamic_ncols=True)
        for cell in progress:
            progress.set_postfix_str(f"{cell.impl} N={cell.problem.q_len} {cell.mode}")
            row = {"run_id": run_id, "job_id": job_id, **results.cell_columns(cell), **env, "exclusive": exclusive}
            started = _now()
            row.update(_measure(cell, plain, worker))
            row = _with_flops(row, cell, ceilings[cell.problem.device, cell.problem.dtype])
            row.update(device_name=device_name(cell.problem.device), started=started, timestamp=_now())
            writer.append(row)
    rows = writer.close()
    print(summary_table(rows))
    print(f"results: {run_dir}  ({len(rows)} rows; load with bench.results.load({str(run_dir)!r}))")
    if plain["report"]:
        from bench.report import write_report  # plotting libraries load only when a report is written

        print(f"report: {write_report([run_dir])}")
    return rows
