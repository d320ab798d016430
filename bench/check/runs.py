"""Runs of the regression suite: making them (pytest-benchmark in a new process), reading and pooling their JSON.

A run folder holds pytest-benchmark's `benchmark.json`: the raw rounds of every cell, the reference
timed before each, peak bytes, and the machine, commit, suite method and `attention_zoo` it came from.
A baseline folder holds BASELINE_RUNS of them (benchmark.json, benchmark-2.json, ...), and each side of
a same-host A/B a few, pooled when compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.check.checkout import REPO

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
                    "peak_bytes": np.nan if info["peak_bytes"] is None else info["peak_bytes"],
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
        "dirty": bool(saved.get("commit_info", {}).get("dirty", False)),
    }
    return pd.DataFrame.from_records(records), environment


def median_reference_ms(cells: pd.DataFrame) -> float:
    """The median time of the reference attention over every round of a run: how busy the machine was."""
    return float(np.median(np.concatenate(cells["reference_ms"].to_list())))


def load_pooled(folder: str | Path) -> tuple[pd.DataFrame, dict]:
    """A folder's suite runs pooled into one: each cell's rounds from every run, the median of their peaks.

    A baseline, or one side of a same-host A/B (bench/check/same_host.py). Its environment is the first
    run's, with `runs` and the pooled `reference_ms` added. Runs made by different suite methods are
    refused; runs made without the memory pass (peaks null) leave the peak to the others.
    """
    names = sorted((path.name for path in Path(folder).glob("benchmark*.json")), key=_run_number) or [SUITE_JSON]
    runs = [load_suite(folder, name) for name in names]
    methods = {environment["suite_method"] for _, environment in runs}
    if len(methods) > 1:
        raise CheckError(f"{folder} mixes runs of different suite methods ({' / '.join(sorted(methods))})")
    cells = pd.concat([frame for frame, _ in runs], ignore_index=True)
    records = []
    for _, measured in cells.groupby(KEY, sort=False):
        time_ms = np.concatenate(measured["time_ms"].to_list())
        reference = np.concatenate(measured["reference_ms"].to_list())
        peaks = measured["peak_bytes"].astype(float)
        records.append(
            {
                **measured.iloc[0].to_dict(),
                "time_ms": time_ms,
                "reference_ms": reference,
                "ratio": time_ms / reference,
                "peak_bytes": float(np.median(peaks.dropna())) if peaks.notna().any() else np.nan,
            }
        )
    pooled = pd.DataFrame.from_records(records)
    return pooled, {**runs[0][1], "runs": len(runs), "reference_ms": median_reference_ms(pooled)}


def run_name(run: int) -> str:
    """The file name of a folder's run number `run` (0 first): benchmark.json, benchmark-2.json, ..."""
    return SUITE_JSON if run == 0 else SUITE_JSON.replace(".json", f"-{run + 1}.json")


def _run_number(name: str) -> int:
    stem = name.removesuffix(".json")
    return int(stem.rsplit("-", 1)[1]) if "-" in stem else 1


def run_suite(
    out_dir: Path,
    imports: list[str],
    select: str | None = None,
    node_ids: list[str] | None = None,
    rounds: int | None = None,
    quiet_reference_ms: float | None = None,
    name: str = SUITE_JSON,
    zoo_dir: Path | None = None,
    peaks: bool = True,
    quiet_wait_s: float | None = None,
) -> int:
    """Run the pytest-benchmark suite (or only node_ids) into out_dir/<name>; pytest's exit status.

    quiet_reference_ms: the reference time for the suite's quiet gate (bench/check/suite.py), at most
    quiet_wait_s waited in all. zoo_dir: a folder holding another `attention_zoo` (the base side of a
    same-host A/B), put first on the process's path; the suite and harness stay this tree's. Python
    runs with -P, so neither side picks up an `attention_zoo` from the working directory by accident.
    peaks False: no memory pass (the run's peaks are null).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-P", "-m", "pytest", *(node_ids or [str(SUITE)]), "-q", "-p", "no:cacheprovider",
        f"--benchmark-json={out_dir / name}", "--benchmark-disable-gc", "--benchmark-quiet",
        *(f"--zoo-import={module}" for module in imports),
        *(["-k", select] if select else []),
        *([f"--rounds={rounds}"] if rounds else []),
        *([f"--quiet-reference-ms={quiet_reference_ms:.4f}"] if quiet_reference_ms else []),
        *([f"--quiet-wait-s={quiet_wait_s:g}"] if quiet_wait_s is not None else []),
        *([] if peaks else ["--no-peaks"]),
    ]  # fmt: skip
    path = [str(folder) for folder in (zoo_dir, REPO) if folder] + [os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    side = f" (attention_zoo from {zoo_dir})" if zoo_dir else ""
    print(f"bench.check: running the regression suite{side}:", " ".join(command[1:]), flush=True)
    return subprocess.run(command, cwd=REPO, env=env).returncode


def node_ids(cells: pd.DataFrame, pairs: set[tuple[str, str]]) -> list[str]:
    """The suite's test ids of the cells of these (entry, mode) pairs."""
    chosen = [(impl, mode) in pairs for impl, mode in zip(cells["impl"], cells["mode"], strict=True)]
    return cells.loc[chosen, "nodeid"].tolist()


# What makes two suite runs' figures comparable: the same CPU (the brand string alone reads only "AMD EPYC"
# or "Intel(R) Xeon(R) Processor" on cloud VMs, so its vendor, family, model, stepping and flags too), the
# same GPU (none on a CPU host), the same torch and thread count.
CPU_FIELDS = ("brand_raw", "vendor_id_raw", "family", "model", "stepping", "flags")
HOST_FIELDS = ("gpu_name", "torch_version", "torch_threads")


def describe_cpu(environment: dict) -> str:
    """A CPU as a person reads it: brand, vendor, family/model/stepping."""
    cpu = environment.get("cpu", {})
    return (
        f"{cpu.get('brand_raw', 'an unknown CPU')} ({cpu.get('vendor_id_raw', '?')} family {cpu.get('family', '?')} "
        f"model {cpu.get('model', '?')} stepping {cpu.get('stepping', '?')})"
    )


def host_difference(recorded: dict, here: dict) -> str | None:
    """How two suite runs' hosts differ where it moves the figures ("CPU model 1 vs 17, ..."), or None."""
    differences = []
    cpu_recorded, cpu_here = recorded.get("cpu", {}), here.get("cpu", {})
    for field in CPU_FIELDS:
        before, now = cpu_recorded.get(field), cpu_here.get(field)
        if field == "flags":
            if set(before or ()) == set(now or ()):  # the same flags, listed in another order or twice
                continue
            gone, added = sorted(set(before or ()) - set(now or ())), sorted(set(now or ()) - set(before or ()))
            differences.append("CPU flags " + " ".join([f"-{f}" for f in gone] + [f"+{f}" for f in added]))
        elif before != now:
            differences.append(f"CPU {field} {before!r} vs {now!r}")
    for field in HOST_FIELDS:
        before, now = recorded.get(field, "" if field == "gpu_name" else None), here.get(field)
        if before != now:
            differences.append(f"{field} {before!r} vs {now!r}")
    return ", ".join(differences) or None
