"""The committed baseline (results/baseline/): history of the suite on one host, and the A/B's default base commit.

A baseline is compared only with runs made on a host like its own (bench/check/runs.py's
host_difference): elsewhere its figures say nothing about a change, and the same-host A/B
(bench/check/same_host.py) is the gate. A refresh records the commit it measured in BASE_COMMIT, which is
the A/B's default base, and refuses a tree with uncommitted changes, so that the runs it writes are
of that commit and say so (`commit_info.dirty` false).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.check.checkout import REPO
from bench.check.runs import CheckError, describe_cpu, host_difference, run_name, run_suite
from bench.check.same_host import BASE_COMMIT_FILE, git


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
