"""Runs of the regression suite: making them (pytest-benchmark in a new process), reading and pooling their JSON.

A run folder holds pytest-benchmark's `benchmark.json`: the raw rounds of every cell, the reference
timed before each, peak bytes, and the machine, commit and suite method it came from. A baseline
folder holds BASELINE_RUNS of them (benchmark.json, benchmark-2.json, ...), pooled when compared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.environment import REPO

SUITE = REPO / "benchmarks"
SUITE_JSON = "benchmark.json"
KEY = ["impl", "mode", "seq_len"]  # a cell
# Suite runs a refreshed baseline pools. Each run can find an entry a few percent slow or fast as a whole
# (a busy minute, its process's placement); with 3 runs two fast ones for peer_performer's forward left every
# later run reading it +5..+11%. More runs average that out; they cost time only when refreshing.
BASELINE_RUNS = 5


class CheckError(Exception):
    """A missing or unreadable results folder; the message is one line."""


def load_suite(results_dir: str | Path, name: str = SUITE_JSON) -> tuple[pd.DataFrame, dict]:
    """One row per measured cell of a suite run (time, reference and ratio samples, peak bytes), and its machine."""
    path = Path(results_dir) / name
    if not path.is_file():
        raise CheckError(f"{results_dir} holds no {name}: give a folder written by `python -m bench.check`")
    try:
        saved = json.loads(path.read_text())
        records = []
        for bench in saved["benchmarks"]:
            info = bench["extra_info"]
            time_ms = np.asarray(bench["stats"]["data"]) * 1e3
            reference_ms = np.asarray(info["reference_ms"])
            records.append(
                {
                    **{key: info[key] for key in KEY},
                    "nodeid": bench["fullname"],
                    "hparams": json.dumps(info["hparams"], sort_keys=True),
                    "time_ms": time_ms,
                    "reference_ms": reference_ms,
                    "ratio": time_ms / reference_ms,
                    "peak_bytes": info["peak_bytes"],
                    "waited_s": info["waited_s"],
                    "declared_time_exponent": info["declared_time_exponent"],
                    "declared_memory_exponent": info["declared_memory_exponent"],
                    "declared_time_complexity": info.get("declared_time_complexity", ""),  # older runs lack it
                    "declared_memory_complexity": info.get("declared_memory_complexity", ""),
                }
            )
    except (ValueError, KeyError, TypeError) as error:
        raise CheckError(f"{path} is not a regression-suite JSON: {error!r}") from None
    machine = saved.get("machine_info", {})
    environment = {
        **machine,
        "suite_method": machine.get("suite_method", "an older suite (no method recorded)"),
        "commit": saved.get("commit_info", {}).get("id", ""),
    }
    return pd.DataFrame.from_records(records), environment


def median_reference_ms(cells: pd.DataFrame) -> float:
    """The median time of the reference attention over every round of a run: how busy the machine was."""
    return float(np.median(np.concatenate(cells["reference_ms"].to_list())))


def load_baseline(baseline_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """A baseline's suite runs pooled into one: each cell's rounds from every run, the median of their peaks.

    Its environment is the first run's, with `runs` and the pooled `reference_ms` added. Runs made by
    different suite methods are refused.
    """
    names = sorted(path.name for path in Path(baseline_dir).glob("benchmark*.json")) or [SUITE_JSON]
    runs = [load_suite(baseline_dir, name) for name in names]
    methods = {environment["suite_method"] for _, environment in runs}
    if len(methods) > 1:
        raise CheckError(f"{baseline_dir} mixes runs of different suite methods ({' / '.join(sorted(methods))})")
    cells = pd.concat([frame for frame, _ in runs], ignore_index=True)
    records = []
    for _, measured in cells.groupby(KEY, sort=False):
        time_ms = np.concatenate(measured["time_ms"].to_list())
        reference = np.concatenate(measured["reference_ms"].to_list())
        records.append(
            {
                **measured.iloc[0].to_dict(),
                "time_ms": time_ms,
                "reference_ms": reference,
                "ratio": time_ms / reference,
                "peak_bytes": float(np.median(measured["peak_bytes"])),
            }
        )
    pooled = pd.DataFrame.from_records(records)
    return pooled, {**runs[0][1], "runs": len(runs), "reference_ms": median_reference_ms(pooled)}


def run_suite(
    out_dir: Path,
    imports: list[str],
    select: str | None = None,
    node_ids: list[str] | None = None,
    rounds: int | None = None,
    quiet_reference_ms: float | None = None,
    name: str = SUITE_JSON,
) -> int:
    """Run the pytest-benchmark suite (or only node_ids) into out_dir/<name>; pytest's exit status.

    quiet_reference_ms: the baseline's reference time, for the suite's quiet gate (bench/regression_suite.py).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pytest", *(node_ids or [str(SUITE)]), "-q", "-p", "no:cacheprovider",
        f"--benchmark-json={out_dir / name}", "--benchmark-disable-gc",
        "--benchmark-columns=median,iqr,rounds", "--benchmark-sort=name",
        *(f"--zoo-import={module}" for module in imports),
        *(["-k", select] if select else []),
        *([f"--rounds={rounds}"] if rounds else []),
        *([f"--quiet-reference-ms={quiet_reference_ms:.4f}"] if quiet_reference_ms else []),
    ]  # fmt: skip
    print("bench.check: running the regression suite:", " ".join(command[1:]), flush=True)
    return subprocess.run(command, cwd=REPO).returncode


def refresh_baseline(baseline_dir: Path, runs: int, imports: list[str], select: str | None, rounds: int | None) -> int:
    """Replace the baseline in baseline_dir with `runs` new suite runs; 0, or 1 if the suite failed."""
    for stale in baseline_dir.glob("benchmark*.json"):
        stale.unlink()
    for run in range(runs):
        name = SUITE_JSON if run == 0 else SUITE_JSON.replace(".json", f"-{run + 1}.json")
        status = run_suite(baseline_dir, imports, select=select, rounds=rounds, name=name)
        if status:
            print(f"bench.check: the suite failed (pytest exit {status}); the baseline is not usable")
            return 1
    print(f"bench.check: baseline of {runs} suite runs written to {baseline_dir}")
    return 0
