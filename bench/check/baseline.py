"""The committed baseline (results/baseline/): history of the suite on one host, and the A/B's default base commit.

A baseline is compared only with runs made on a host like its own (bench/check/runs.py's
host_difference): elsewhere its figures say nothing about a change, and the same-host A/B
(bench/check/same_host.py) is the gate. A refresh records the commit it measured in BASE_COMMIT, which is
the A/B's default base, and refuses a tree with uncommitted changes, so that the runs it writes are
of that commit and say so (`commit_info.dirty` false).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import cpuinfo

from bench.check.checkout import REPO
from bench.check.compare import Sides, Tolerances, compare, confirm, flagged_pairs, flagged_rows
from bench.check.printout import machine_label, reference_lines, verdict
from bench.check.runs import (
    CheckError,
    describe_cpu,
    host_difference,
    load_pooled,
    load_suite,
    median_reference_ms,
    node_ids,
    run_name,
    run_suite,
)
from bench.check.same_host import BASE_COMMIT_FILE, git
from bench.check.suite import suite_machine


def uncommitted_changes(ignored: Path) -> list[str]:
    """Tracked files with uncommitted changes, outside `ignored` (the baseline folder being refreshed)."""
    spec = [f":(exclude){ignored.resolve().relative_to(REPO)}"] if ignored.resolve().is_relative_to(REPO) else []
    lines = git("status", "--porcelain", "--untracked-files=no", "--", ".", *spec).splitlines()
    return [line[3:] for line in lines]


def refresh_baseline(baseline_dir: Path, runs: int, imports: list[str], select: str | None, rounds: int | None) -> int:
    """Replace the baseline in baseline_dir with `runs` new suite runs and BASE_COMMIT; 0, 1 if the suite failed.

    The runs are measured into a temporary folder and moved in at the end, so the tree stays clean while
    they are measured (and a failed refresh leaves the old baseline as it was).
    """
    commit = git("rev-parse", "HEAD")
    with tempfile.TemporaryDirectory(prefix="zoo-baseline-") as staging:
        for run in range(runs):
            status = run_suite(Path(staging), imports, select=select, rounds=rounds, name=run_name(run))
            if status:
                print(f"bench.check: the suite failed (pytest exit {status}); the baseline is left as it was")
                return 1
        baseline_dir.mkdir(parents=True, exist_ok=True)
        for stale in baseline_dir.glob("benchmark*.json"):
            stale.unlink()
        for run in range(runs):
            shutil.move(Path(staging) / run_name(run), baseline_dir / run_name(run))
    (baseline_dir / BASE_COMMIT_FILE).write_text(commit + "\n")
    print(f"bench.check: baseline of {runs} suite runs of {commit[:10]} written to {baseline_dir} (commit it)")
    return 0


def dirty_note(environment: dict) -> str | None:
    """A line when the baseline was measured from a tree with uncommitted changes."""
    if not environment.get("dirty"):
        return None
    return (
        f"note: the baseline was measured from commit {environment.get('commit', '?')[:10]} with uncommitted "
        "changes (commit_info.dirty): its figures may not be that commit's"
    )


def incomparable_line(base_env: dict, host_env: dict, gate: str) -> str | None:
    """The one line saying why a baseline is not compared with runs on this host, or None when it is comparable."""
    difference = host_difference(base_env, host_env)
    if difference is None:
        return None
    return (
        f"baseline from {describe_cpu(base_env)}, this host is {describe_cpu(host_env)}: not comparable "
        f"({difference}); {gate}"
    )


def require_clean_tree(baseline_dir: Path) -> None:
    """CheckError (one line) when tracked files outside baseline_dir have uncommitted changes."""
    changed = uncommitted_changes(baseline_dir)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise CheckError(
            f"--refresh-baseline needs a clean tree (the baseline records its commit): commit or stash {shown}"
        )


def baseline_check(args: argparse.Namespace, new_run_dir: Path, tolerances: Tolerances) -> int:
    """A suite run (made now, or saved in RESULTS_DIR) against the baseline, with its confirmation re-runs."""
    baseline, base_env = load_pooled(args.baseline)
    ran_here = args.results_dir is None
    results_dir = args.results_dir or new_run_dir
    header = [
        f"baseline: {machine_label(base_env)} ({base_env['runs']} runs pooled)",
        *filter(None, [dirty_note(base_env)]),
    ]
    suite_status = 0
    if ran_here:
        not_comparable = incomparable_line(base_env, host_machine(), "the same-host A/B (--base) is the gate here")
        if not_comparable:
            print("\n".join([*header, not_comparable]))
            return 0
        # runs made here wait for the machine to be as quiet as it was for the baseline (bench/check/suite.py)
        suite_status = run_suite(
            results_dir, args.zoo_import, args.select, rounds=args.rounds, quiet_reference_ms=base_env["reference_ms"]
        )
    try:
        fresh, fresh_env = load_suite(results_dir)
    except CheckError:
        if suite_status:
            print(f"bench.check: the suite failed (pytest exit {suite_status}) before writing results", file=sys.stderr)
            return 1
        raise
    if fresh_env["suite_method"] != base_env["suite_method"]:
        raise CheckError(
            f"{results_dir} was measured as '{fresh_env['suite_method']}', the baseline as "
            f"'{base_env['suite_method']}': refresh the baseline (--refresh-baseline)"
        )
    fresh_env.update(reference_ms=median_reference_ms(fresh), waited_s=float(fresh["waited_s"].sum()))
    header.append(f"this run: {machine_label(fresh_env)}")
    difference = None if ran_here else host_difference(base_env, fresh_env)
    if difference:
        header.append(
            f"warning: this run is from {describe_cpu(fresh_env)}, the baseline from {describe_cpu(base_env)} "
            f"({difference}): compared as asked, but figures move with the machine"
        )
    sides = Sides(select=args.select or fresh_env.get("select") or None)
    table, n_cells, missing = compare(baseline, fresh, tolerances, sides)
    flagged = flagged_rows(table)
    attempt = 0
    while not table.empty:  # the live run's re-runs as it makes them; a saved run's as they were saved
        attempt += 1
        rerun_dir = results_dir / f"confirm-{attempt}"
        entries = flagged_pairs(table)
        if ran_here and attempt <= args.confirm and entries:
            print(f"bench.check: re-measuring the {len(entries)} flagged entry/mode pairs in a new process", flush=True)
            suite_status |= run_suite(
                rerun_dir, args.zoo_import, node_ids=node_ids(fresh, entries), rounds=args.rounds,
                quiet_reference_ms=base_env["reference_ms"],
            )  # fmt: skip
        try:
            rerun, _ = load_suite(rerun_dir)
        except CheckError:
            break  # no such re-run (or it failed before writing results: suite_status says so)
        fresh_env["waited_s"] += float(rerun["waited_s"].sum())
        table = confirm(table, compare(baseline, rerun, tolerances)[0], f"re-run {attempt}")
    lines = [*header, *reference_lines(base_env, fresh_env)]
    lines += verdict(table, flagged, n_cells, missing, suite_status, confirmed=ran_here or attempt > 1)
    print("\n".join(lines))
    return 1 if suite_status or table["regressed"].any() else 0


def host_machine() -> dict:
    """This host as a suite run would record it (pytest-benchmark's CPU info and the suite's own fields)."""
    return {"cpu": cpuinfo.get_cpu_info(), **suite_machine()}
