"""`python -m bench.check`: run the regression suite and say what got slower, hungrier or steeper.

    python -m bench.check --base                                    # A/B on this host: BASE_COMMIT vs the working tree
    python -m bench.check --base main                               # ... against main (a branch, tag or commit)
    python -m bench.check --base --baseline results/baseline        # ... and the baseline too, where comparable
    python -m bench.check --baseline results/baseline               # run the suite now, compare with the baseline
    python -m bench.check --baseline results/baseline RESULTS_DIR   # compare a suite run saved earlier
    python -m bench.check --refresh-baseline results/baseline       # run the suite and make it the baseline

The gate is the same-host A/B (bench/check/same_host.py): attention_zoo at the base commit and in the working
tree, measured in turn by this tree's suite. The committed baseline is history (bench/check/baseline.py): it is
compared only with runs on a host like its own. How two sides are compared is bench/check/compare.py.
A figure flagged in a run the check made itself is confirmed before it is reported: the flagged
entries' cells are measured again (both sides, in an A/B; `--confirm` times) and it is a regression only
when every re-run flags it too. On a shared machine one process can find an entry a few percent
slow (its memory layout, a busy neighbour for a minute); that does not repeat, a change to its code does.

Exit status: 0 no regression, 1 regressions (a table names each) or the suite failed, 2 a usage error.
Comparisons that cannot be made (a cell or entry on one side only, changed hyperparameters) are listed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cpuinfo
import pandas as pd

from bench.check import compare as comparing
from bench.check.baseline import dirty_note, incomparable_line, refresh_baseline, require_clean_tree
from bench.check.checkout import REPO
from bench.check.compare import (
    AB_SIDES,
    CHECK_COLUMNS,
    Sides,
    Tolerances,
    compare,
    confirm,
    format_table,
    largest_changes,
)
from bench.check.runs import (
    BASELINE_RUNS,
    CheckError,
    describe_cpu,
    host_difference,
    load_pooled,
    load_suite,
    median_reference_ms,
    run_suite,
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
from bench.check.suite import QUIET_MARGIN, suite_machine
from bench.errors import OneLineParser

CONFIRM_RUNS = 1
BUSY_WARNING = 1.05  # a run whose reference took this much longer than the baseline's was timed on a busier machine
DEFAULT_BASELINE = REPO / "results" / "baseline"  # where --base finds BASE_COMMIT when no --baseline is given


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m bench.check", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--base", nargs="?", const="", metavar="REF",
        help="A/B on this host against REF's attention_zoo (default: the baseline folder's BASE_COMMIT)",
    )  # fmt: skip
    parser.add_argument("--baseline", type=Path, help="the baseline folder to compare with (where comparable)")
    parser.add_argument("--refresh-baseline", type=Path, metavar="DIR", help="run the suite and save it as DIR")
    parser.add_argument("results_dir", nargs="?", type=Path, help="a saved suite run; omitted: run the suite now")
    parser.add_argument("--out", type=Path, help="where a new run goes (default results/check/<time>)")
    parser.add_argument("--time-tolerance", type=float, default=comparing.TIME_TOLERANCE, help="relative, e.g. 0.10")
    parser.add_argument(
        "--memory-tolerance", type=float, default=comparing.MEMORY_TOLERANCE, help="relative, e.g. 0.10"
    )
    parser.add_argument(
        "--exponent-tolerance", type=float, default=comparing.EXPONENT_TOLERANCE, help="absolute, e.g. 0.35"
    )
    parser.add_argument("--alpha", type=float, default=comparing.ALPHA, help="Mann-Whitney significance level")
    parser.add_argument(
        "--confirm", type=int, default=CONFIRM_RUNS, help="re-runs of flagged entries that must flag them again"
    )
    parser.add_argument(
        "--zoo-import", action="append", default=[], metavar="MODULE",
        help="modules that register or replace entries (in an A/B: on the working tree's side only)",
    )  # fmt: skip
    parser.add_argument(
        "--runs", type=int,
        help=f"suite runs: of a refreshed baseline (default {BASELINE_RUNS}), per side of an A/B (default {AB_RUNS})",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, help=f"timed rounds per cell of a new run (default: the suite's; {AB_ROUNDS} in an A/B)"
    )
    parser.add_argument("-k", dest="select", help="run only the suite cells matching this pytest -k expression")
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("time_tolerance", "memory_tolerance", "exponent_tolerance", "alpha", "rounds", "runs"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} is invalid: it must be positive")
    if args.confirm < 0:
        parser.error(f"--confirm={args.confirm} is invalid: it must be 0 or more")
    try:
        if args.refresh_baseline:
            if args.results_dir or args.base is not None or args.baseline:
                parser.error("--refresh-baseline runs the suite itself: drop RESULTS_DIR, --base and --baseline")
            require_clean_tree(args.refresh_baseline)
            runs = args.runs or BASELINE_RUNS
            return refresh_baseline(args.refresh_baseline, runs, args.zoo_import, args.select, args.rounds)
        if args.base is not None:
            if args.results_dir:
                parser.error("--base measures both sides itself: drop RESULTS_DIR")
            return same_host_check(args)
        if args.baseline is None:
            parser.error("give --base [REF] (the same-host A/B), --baseline DIR, or --refresh-baseline DIR")
        return baseline_check(args)
    except CheckError as error:
        parser.error(str(error))


def _tolerances(args: argparse.Namespace) -> Tolerances:
    return Tolerances(args.time_tolerance, args.memory_tolerance, args.exponent_tolerance, args.alpha)


def _new_run_dir(args: argparse.Namespace) -> Path:
    return args.out or REPO / "results" / "check" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _flagged_pairs(*tables: pd.DataFrame) -> set[tuple[str, str]]:
    """The (entry, mode) pairs any of the tables flags."""
    flagged = pd.concat([table.loc[table["regressed"].astype(bool), ["impl", "mode"]] for table in tables])
    return set(flagged.itertuples(index=False, name=None))


def _node_ids(cells: pd.DataFrame, pairs: set[tuple[str, str]]) -> list[str]:
    """The suite's test ids of the cells of these (entry, mode) pairs."""
    chosen = [(impl, mode) in pairs for impl, mode in zip(cells["impl"], cells["mode"], strict=True)]
    return cells.loc[chosen, "nodeid"].tolist()


@dataclass
class History:
    """The baseline's comparison with the working tree's side of an A/B, or the line saying why there is none."""

    folder: Path
    environment: dict
    not_comparable: str | None = None
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CHECK_COLUMNS))
    n_cells: int = 0
    missing: list[str] = field(default_factory=list)

    def lines(self, flagged: pd.DataFrame, tree_env: dict) -> list[str]:
        lines = [f"history: {self.folder} ({self.environment['runs']} runs of {_commit(self.environment)})"]
        lines += list(filter(None, [dirty_note(self.environment)]))
        if self.not_comparable:
            return [*lines, self.not_comparable]
        lines += _reference_lines(self.environment, tree_env)
        return lines + verdict(self.table, flagged, self.n_cells, self.missing, 0, True, "against the baseline")


def same_host_check(args: argparse.Namespace) -> int:
    """The A/B: base commit against the working tree on this host, then the baseline where it is comparable."""
    ref = args.base or recorded_base(args.baseline or DEFAULT_BASELINE)
    commit = resolve_commit(ref)
    baseline, baseline_env = load_pooled(args.baseline) if args.baseline else (None, None)
    out_dir, tolerances = _new_run_dir(args), _tolerances(args)
    runs, rounds = args.runs or AB_RUNS, args.rounds or AB_ROUNDS
    with base_zoo(commit) as zoo_dir:
        status, quiet_ms = run_sides(out_dir, zoo_dir, args.zoo_import, runs, rounds, select=args.select)
        try:
            (base, base_env), (tree, tree_env) = (load_pooled(out_dir / side) for side in SIDES)
        except CheckError:
            print(f"bench.check: the suite failed (pytest exit {status}) before writing results", file=sys.stderr)
            return 1
        sides_env = zip(SIDES, (base_env, tree_env), strict=True)
        wrong_zoo = [line for side, env in sides_env if (line := zoo_source_error(env, side, zoo_dir))]
        if wrong_zoo:
            print(f"bench.check: {'; '.join(wrong_zoo)}", file=sys.stderr)
            return 1
        waited_s = float(base["waited_s"].sum() + tree["waited_s"].sum())
        table, n_cells, missing = compare(base, tree, tolerances, AB_SIDES)
        history = None
        if baseline is not None:
            tree_env["reference_ms"] = median_reference_ms(tree)
            history = History(args.baseline, baseline_env)
            history.not_comparable = incomparable_line(
                baseline_env, tree_env, f"the A/B against {commit[:10]} is the gate"
            )
            if not history.not_comparable:
                history.table, history.n_cells, history.missing = compare(
                    baseline, tree, tolerances, Sides(select=args.select)
                )
        flagged = table[table["regressed"]]
        history_flagged = history.table[history.table["regressed"].astype(bool)] if history else None
        for attempt in range(1, args.confirm + 1):
            pairs = _flagged_pairs(table, *([history.table] if history else []))
            if not pairs:
                break
            print(f"bench.check: re-measuring the {len(pairs)} flagged entry/mode pairs on both sides", flush=True)
            rerun_dir = out_dir / f"confirm-{attempt}"
            node_ids = {"base": _node_ids(base, pairs), "tree": _node_ids(tree, pairs)}
            status |= run_sides(
                rerun_dir, zoo_dir, args.zoo_import, runs, rounds, node_ids=node_ids, quiet_ms=quiet_ms
            )[0]
            try:
                rerun = {side: load_pooled(rerun_dir / side)[0] for side in SIDES if node_ids[side]}
            except CheckError:
                break  # it failed before writing results: status says so, and the figures stay flagged
            waited_s += sum(float(cells["waited_s"].sum()) for cells in rerun.values())
            column = f"re-run {attempt}"
            if len(rerun) == len(SIDES):
                table = confirm(table, compare(rerun["base"], rerun["tree"], tolerances, AB_SIDES)[0], column)
            if history and not history.table.empty and "tree" in rerun:
                history.table = confirm(history.table, compare(baseline, rerun["tree"], tolerances)[0], column)
    lines = [
        f"A/B on this host, {describe_cpu(tree_env)}, torch {tree_env.get('torch_version', '?')}: attention_zoo "
        f"at {commit[:10]} ({ref or 'BASE_COMMIT'}) against the working tree ({_commit(tree_env)}); "
        f"{runs} suite run(s) per side taking turns, {rounds} rounds per cell in each",
        f"reference attention (median): {base_env['reference_ms']:.2f} ms on the base side, "
        f"{tree_env['reference_ms']:.2f} ms on the working tree's; quiet gate at {QUIET_MARGIN:.2f} x "
        f"{quiet_ms or float('nan'):.2f} ms (this host's first run), waited {waited_s:.0f} s",
        *verdict(table, flagged, n_cells, missing, status, True, f"against {commit[:10]}", first="base"),
    ]
    if history:
        lines += history.lines(history_flagged, tree_env)
    print("\n".join(lines))
    failed = status or table["regressed"].any() or (history is not None and history.table["regressed"].any())
    return 1 if failed else 0


def baseline_check(args: argparse.Namespace) -> int:
    """A suite run (made now, or saved in RESULTS_DIR) against the baseline, with its confirmation re-runs."""
    baseline, base_env = load_pooled(args.baseline)
    ran_here = args.results_dir is None
    results_dir = args.results_dir or _new_run_dir(args)
    header = [f"baseline: {_machine(base_env)} ({base_env['runs']} runs pooled)", *filter(None, [dirty_note(base_env)])]
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
    header.append(f"this run: {_machine(fresh_env)}")
    difference = None if ran_here else host_difference(base_env, fresh_env)
    if difference:
        header.append(
            f"warning: this run is from {describe_cpu(fresh_env)}, the baseline from {describe_cpu(base_env)} "
            f"({difference}): compared as asked, but figures move with the machine"
        )
    tolerances, sides = _tolerances(args), Sides(select=args.select or fresh_env.get("select") or None)
    table, n_cells, missing = compare(baseline, fresh, tolerances, sides)
    flagged = table[table["regressed"]]
    attempt = 0
    while not table.empty:  # the live run's re-runs as it makes them; a saved run's as they were saved
        attempt += 1
        rerun_dir = results_dir / f"confirm-{attempt}"
        entries = _flagged_pairs(table)
        if ran_here and attempt <= args.confirm and entries:
            print(f"bench.check: re-measuring the {len(entries)} flagged entry/mode pairs in a new process", flush=True)
            suite_status |= run_suite(
                rerun_dir, args.zoo_import, node_ids=_node_ids(fresh, entries), rounds=args.rounds,
                quiet_reference_ms=base_env["reference_ms"],
            )  # fmt: skip
        try:
            rerun, _ = load_suite(rerun_dir)
        except CheckError:
            break  # no such re-run (or it failed before writing results: suite_status says so)
        fresh_env["waited_s"] += float(rerun["waited_s"].sum())
        table = confirm(table, compare(baseline, rerun, tolerances)[0], f"re-run {attempt}")
    lines = [*header, *_reference_lines(base_env, fresh_env)]
    lines += verdict(table, flagged, n_cells, missing, suite_status, confirmed=ran_here or attempt > 1)
    print("\n".join(lines))
    return 1 if suite_status or table["regressed"].any() else 0


def host_machine() -> dict:
    """This host as a suite run would record it (pytest-benchmark's CPU info and the suite's own fields)."""
    return {"cpu": cpuinfo.get_cpu_info(), **suite_machine()}


def _commit(env: dict) -> str:
    return (env.get("commit", "")[:10] or "?") + ("+dirty" if env.get("dirty") else "")


def _machine(env: dict) -> str:
    cpu = env.get("cpu", {}).get("brand_raw", "unknown CPU")
    return f"{cpu}, torch {env.get('torch_version', '?')}, commit {env.get('commit', '')[:10] or '?'}"


def _reference_lines(base_env: dict, fresh_env: dict) -> list[str]:
    """The reference times of a baseline and a run, and a warning when the run's machine was busier."""
    lines = [
        f"reference attention (median): {base_env['reference_ms']:.2f} ms in the baseline, "
        f"{fresh_env['reference_ms']:.2f} ms in this run"
        + (f"; waited {fresh_env['waited_s']:.0f} s for a quiet machine" if "waited_s" in fresh_env else "")
    ]
    if fresh_env["reference_ms"] > BUSY_WARNING * base_env["reference_ms"]:
        busier = fresh_env["reference_ms"] / base_env["reference_ms"] - 1
        lines.append(
            f"warning: the machine was busier than for the baseline (reference {100 * busier:+.0f}%): entries "
            "slow differently under load, so time figures move more than usual"
        )
    return lines


def verdict(
    table: pd.DataFrame,
    flagged: pd.DataFrame,
    n_cells: int,
    missing: list[str],
    suite_status: int,
    confirmed: bool,
    against: str = "",
    first: str = "baseline",
) -> list[str]:
    """What a comparison prints: how much was compared, what could not be, dismissed flags, and a verdict."""
    table = table if not table.empty else pd.DataFrame(columns=CHECK_COLUMNS)
    lines = [
        f"compared {len(table)} figures of {table['impl'].nunique()} entries ({n_cells} cells): time / ref, "
        "peak bytes, time and memory exponents in N, per entry and mode"
    ]
    if not table.empty:
        lines.append(f"largest changes: {largest_changes(table)}")
    if missing:
        lines += [f"could not compare {len(missing)}:"] + [f"  {line}" for line in missing]
    if suite_status:
        lines.append(f"REGRESSION: the suite itself failed (pytest exit {suite_status}); see its output above")
    keys = ["impl", "mode", "check"]
    dismissed = table[~table["regressed"].astype(bool)].merge(flagged[keys], on=keys)
    if not dismissed.empty:
        lines += [
            f"flagged in the first run but not again when re-measured ({len(dismissed)}), not regressions:",
            format_table(dismissed, first),
        ]
    if not flagged.empty and not confirmed:
        lines.append("(a saved run is compared as it is: flagged figures are not re-measured)")
    regressed = table[table["regressed"].astype(bool)]
    if regressed.empty:
        lines.append("no regression among the cells that ran" if suite_status else f"no regression {against}".strip())
    else:
        names = ", ".join(sorted(regressed["impl"].unique()))
        heading = f"REGRESSION in {names}" + (f" ({against})" if against else "") + ":"
        lines += [heading, format_table(regressed.sort_values(["impl", "mode"], kind="stable"), first)]
    return lines
