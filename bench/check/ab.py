"""`python -m bench.check --base [REF]`: the same-host A/B, then the committed baseline where it is comparable.

The sides are measured in turn (bench/check/same_host.py) and compared (compare.py); a flagged figure is
re-measured on both sides (`--confirm` times) and stays a regression only when every re-run flags it too.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.check.baseline import dirty_note, incomparable_line
from bench.check.checkout import REPO
from bench.check.compare import (
    AB_SIDES,
    CHECK_COLUMNS,
    Sides,
    Tolerances,
    compare,
    confirm,
    flagged_pairs,
    flagged_rows,
)
from bench.check.printout import commit_label, reference_lines, verdict
from bench.check.runs import (
    CheckError,
    describe_cpu,
    load_pooled,
    median_reference_ms,
    node_ids,
)
from bench.check.same_host import (
    AB_ROUNDS,
    AB_RUNS,
    SIDES,
    base_zoo,
    recorded_base,
    resolve_commit,
    run_sides,
    zoo_source_error,
)
from bench.check.suite import QUIET_MARGIN

DEFAULT_BASELINE = REPO / "results" / "baseline"  # where --base finds BASE_COMMIT when no --baseline is given


@dataclass
class ABRun:
    """One A/B job: where its runs go, the base side's attention_zoo, its processes and rounds, and what it found."""

    out_dir: Path
    zoo_dir: Path
    imports: list[str]
    runs: int
    rounds: int
    select: str | None
    quiet_ms: float | None = None  # the quiet gate's threshold: the first process's reference
    status: int = 0  # pytest's statuses, or-ed
    waited_s: float = 0.0

    def measure(self, folder: Path, cells: dict[str, list[str]] | None = None) -> dict | None:
        """Both sides (or only these cells of each) into folder, taking turns: side -> (cells, environment).

        None when the suite failed before writing results (status says so).
        """
        select = self.select if cells is None else None
        status, quiet_ms = run_sides(
            folder, self.zoo_dir, self.imports, self.runs, self.rounds, select, cells, self.quiet_ms
        )
        self.status, self.quiet_ms = self.status | status, self.quiet_ms or quiet_ms
        try:
            sides = {side: load_pooled(folder / side) for side in SIDES if cells is None or cells[side]}
        except CheckError:
            return None
        self.waited_s += sum(float(frame["waited_s"].sum()) for frame, _ in sides.values())
        return sides


@dataclass
class History:
    """The baseline's comparison with the working tree's side of an A/B, or the line saying why there is none."""

    folder: Path
    environment: dict
    cells: pd.DataFrame  # the baseline's pooled runs
    not_comparable: str | None = None
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CHECK_COLUMNS))
    n_cells: int = 0
    missing: list[str] = field(default_factory=list)

    def lines(self, flagged: pd.DataFrame, tree_env: dict) -> list[str]:
        lines = [f"history: {self.folder} ({self.environment['runs']} runs of {commit_label(self.environment)})"]
        lines += list(filter(None, [dirty_note(self.environment)]))
        if self.not_comparable:
            return [*lines, self.not_comparable]
        lines += reference_lines(self.environment, tree_env)
        return lines + verdict(self.table, flagged, self.n_cells, self.missing, 0, True, "against the baseline")


def same_host_check(args: argparse.Namespace, out_dir: Path, tolerances: Tolerances) -> int:
    """The A/B: base commit against the working tree on this host, then the baseline where it is comparable."""
    ref = args.base or recorded_base(args.baseline or DEFAULT_BASELINE)
    commit = resolve_commit(ref)
    with base_zoo(commit) as zoo_dir:
        ab = ABRun(out_dir, zoo_dir, args.zoo_import, args.runs or AB_RUNS, args.rounds or AB_ROUNDS, args.select)
        sides = ab.measure(out_dir)
        if sides is None:
            print(f"bench.check: the suite failed (pytest exit {ab.status}) before writing results", file=sys.stderr)
            return 1
        (base, base_env), (tree, tree_env) = sides["base"], sides["tree"]
        wrong_zoo = [line for side, (_, env) in sides.items() if (line := zoo_source_error(env, side, zoo_dir))]
        if wrong_zoo:
            print(f"bench.check: {'; '.join(wrong_zoo)}", file=sys.stderr)
            return 1
        table, n_cells, missing = compare(base, tree, tolerances, AB_SIDES)
        history = _history(args, tree, tree_env, commit, tolerances)
        flagged = flagged_rows(table)
        history_flagged = flagged_rows(history.table) if history else None
        table = _confirm(ab, args.confirm, base, tree, table, history, tolerances)
    lines = [
        *_header(ab, ref, commit, base_env, tree_env),
        *verdict(table, flagged, n_cells, missing, ab.status, True, f"against {commit[:10]}", first="base"),
    ]
    if history:
        lines += history.lines(history_flagged, tree_env)
    print("\n".join(lines))
    failed = ab.status or table["regressed"].any() or (history is not None and history.table["regressed"].any())
    return 1 if failed else 0


def _history(
    args: argparse.Namespace, tree: pd.DataFrame, tree_env: dict, commit: str, tolerances: Tolerances
) -> History | None:
    """The committed baseline (--baseline) against the working tree's side, where the hosts are alike."""
    if not args.baseline:
        return None
    baseline, baseline_env = load_pooled(args.baseline)
    tree_env["reference_ms"] = median_reference_ms(tree)
    history = History(args.baseline, baseline_env, baseline)
    history.not_comparable = incomparable_line(baseline_env, tree_env, f"the A/B against {commit[:10]} is the gate")
    if not history.not_comparable:
        history.table, history.n_cells, history.missing = compare(baseline, tree, tolerances, Sides(select=args.select))
    return history


def _confirm(
    ab: ABRun,
    times: int,
    base: pd.DataFrame,
    tree: pd.DataFrame,
    table: pd.DataFrame,
    history: History | None,
    tolerances: Tolerances,
) -> pd.DataFrame:
    """The A/B's table after re-measuring its flagged entries on both sides (the history's table updated too)."""
    for attempt in range(1, times + 1):
        pairs = flagged_pairs(table, *([history.table] if history else []))
        if not pairs:
            break
        print(f"bench.check: re-measuring the {len(pairs)} flagged entry/mode pairs on both sides", flush=True)
        rerun = ab.measure(
            ab.out_dir / f"confirm-{attempt}", {"base": node_ids(base, pairs), "tree": node_ids(tree, pairs)}
        )
        if rerun is None:
            break  # it failed before writing results: status says so, and the figures stay flagged
        column = f"re-run {attempt}"
        if len(rerun) == len(SIDES):
            table = confirm(table, compare(rerun["base"][0], rerun["tree"][0], tolerances, AB_SIDES)[0], column)
        if history and not history.table.empty and "tree" in rerun:
            history.table = confirm(history.table, compare(history.cells, rerun["tree"][0], tolerances)[0], column)
    return table


def _header(ab: ABRun, ref: str, commit: str, base_env: dict, tree_env: dict) -> list[str]:
    """The A/B's first lines: the host, both sides' commits, the runs, the reference times and the wait."""
    return [
        f"A/B on this host, {describe_cpu(tree_env)}, torch {tree_env.get('torch_version', '?')}: attention_zoo "
        f"at {commit[:10]} ({ref or 'BASE_COMMIT'}) against the working tree ({commit_label(tree_env)}); "
        f"{ab.runs} suite run(s) per side taking turns, {ab.rounds} rounds per cell in each",
        f"reference attention (median): {base_env['reference_ms']:.2f} ms on the base side, "
        f"{tree_env['reference_ms']:.2f} ms on the working tree's; quiet gate at {QUIET_MARGIN:.2f} x "
        f"{ab.quiet_ms or float('nan'):.2f} ms (this host's first run), waited {ab.waited_s:.0f} s",
    ]
