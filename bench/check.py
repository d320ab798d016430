"""`python -m bench.check`: run the regression suite and say what got slower, hungrier or steeper than the baseline.

    python -m bench.check --baseline results/baseline               # run the suite now, then compare
    python -m bench.check --baseline results/baseline RESULTS_DIR   # compare a suite run saved earlier
    python -m bench.check --refresh-baseline results/baseline       # run the suite and make it the baseline

Suite runs are read and made by bench/suite_runs.py; a baseline's runs are pooled into one.
Compared per entry and mode, over the N of the suite, so that a change to an entry's code (which
shows at every N) stands out from one noisy cell:
- time: each round's time divided by the reference attention timed just before it (bench/regression_suite.py).
  Regressed when the median over N of the change in median ratio exceeds `--time-tolerance` AND a
  one-sided Mann-Whitney U test over the pooled rounds says the growth is not chance (p < `--alpha`), as
  asv does. The tolerance guards against drift between runs, which the test alone would call significant.
- peak memory: regressed when peak bytes (plus MEMORY_SLACK_BYTES on both sides, for page granularity)
  grew by more than `--memory-tolerance` at every N but one.
- exponents: the time and memory exponents fitted over N (bench/fit.py) must stay within
  `--exponent-tolerance` of the declared complexity, or of the baseline's fit where that was already
  higher (a baseline cannot fail its own check).
A figure flagged in a run the check made itself is confirmed before it is reported: the flagged
entries' cells are measured again in a new process (`--confirm` times) and it is a regression only
when every re-run flags it too. On a shared machine one process can find an entry a few percent
slow (its memory layout, a busy neighbour for a minute); that does not repeat, a change to its code does.

Exit status: 0 no regression, 1 regressions (a table names each) or the suite failed, 2 a usage error.
Comparisons that cannot be made (a cell or entry missing on one side, changed hyperparameters) are listed.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from bench.environment import REPO
from bench.fit import asymptotic_fit, declared_slope
from bench.suite_runs import (
    BASELINE_RUNS,
    KEY,
    CheckError,
    load_baseline,
    load_suite,
    median_reference_ms,
    refresh_baseline,
    run_suite,
)

# Tolerances, set from the drift measured between suite runs on a shared 2-core VM (README, "Tolerances")
TIME_TOLERANCE = 0.10
MEMORY_TOLERANCE = 0.10
MEMORY_SLACK_BYTES = 256 * 1024
EXPONENT_TOLERANCE = 0.35
ALPHA = 0.01
CONFIRM_RUNS = 1
BUSY_WARNING = 1.05  # a run whose reference took this much longer than the baseline's was timed on a busier machine
CHECK_COLUMNS = ["impl", "mode", "check", "baseline", "now", "change", "p", "by_n", "regressed"]


@dataclass(frozen=True)
class Tolerances:
    time: float = TIME_TOLERANCE
    memory: float = MEMORY_TOLERANCE
    exponent: float = EXPONENT_TOLERANCE
    alpha: float = ALPHA


def _paired(base: pd.DataFrame, fresh: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The cells measured on both sides with the same hyperparameters, and a line for each that is not."""
    merged = base.merge(fresh, on=KEY, how="outer", suffixes=("_base", "_fresh"), indicator="side")
    missing = []
    for row in merged.itertuples():
        cell = f"{row.impl} {row.mode} N={row.seq_len}"
        if row.side == "left_only":
            missing.append(f"{cell}: in the baseline, not measured in this run")
        elif row.side == "right_only":
            missing.append(f"{cell}: not in the baseline (refresh it to start tracking)")
        elif row.hparams_base != row.hparams_fresh:
            missing.append(f"{cell}: hyperparameters changed ({row.hparams_base} -> {row.hparams_fresh})")
    both = merged[(merged["side"] == "both") & (merged["hparams_base"] == merged["hparams_fresh"])]
    return both.drop(columns="side"), missing


def _by_n(changes: pd.Series) -> str:
    return " ".join(f"{n}:{100 * c:+.0f}%" for n, c in changes.items())


def time_regressions(paired: pd.DataFrame, tolerances: Tolerances) -> pd.DataFrame:
    """Per entry and mode: the median over N of each cell's change in median time/reference ratio, and its p-value.

    The rounds of every N, each divided by its cell's baseline median, are pooled for a one-sided
    Mann-Whitney U test: a change of the entry's code shows at every N, one noisy cell does not.
    """
    records = []
    for (impl, mode), cells in paired.groupby(["impl", "mode"], sort=True):
        cells = cells.sort_values("seq_len")
        base_median = cells["ratio_base"].map(np.median)
        changes = pd.Series(
            (cells["ratio_fresh"].map(np.median) / base_median - 1).to_numpy(), index=cells["seq_len"].to_numpy()
        )
        fresh = np.concatenate([r / m for r, m in zip(cells["ratio_fresh"], base_median, strict=True)])
        base = np.concatenate([r / m for r, m in zip(cells["ratio_base"], base_median, strict=True)])
        p = mannwhitneyu(fresh, base, alternative="greater").pvalue
        change = float(changes.median())
        records.append(
            {"impl": impl, "mode": mode, "check": "time / ref", "baseline": base_median.iloc[-1],
             "now": float(np.median(cells["ratio_fresh"].iloc[-1])), "change": change, "p": p,
             "by_n": _by_n(changes), "regressed": change > tolerances.time and p < tolerances.alpha}
        )  # fmt: skip
    return pd.DataFrame.from_records(records)


def memory_regressions(paired: pd.DataFrame, tolerances: Tolerances) -> pd.DataFrame:
    """Per entry and mode: the change in peak bytes that holds at every N but one (slack added on both sides).

    Peaks are read while every large block has pages of its own (bench/memory.py), so they repeat to a
    few percent; small cells still move by a few hundred KiB of Python and heap bookkeeping, hence
    the slack, and one cell may be off without the entry being called hungrier.
    """
    records = []
    for (impl, mode), cells in paired.groupby(["impl", "mode"], sort=True):
        cells = cells.sort_values("seq_len")
        base, now = cells["peak_bytes_base"].astype(float), cells["peak_bytes_fresh"].astype(float)
        changes = pd.Series(
            ((now + MEMORY_SLACK_BYTES) / (base + MEMORY_SLACK_BYTES) - 1).to_numpy(), index=cells["seq_len"].to_numpy()
        )
        change = float(np.sort(changes)[min(1, len(changes) - 1)])
        records.append(
            {"impl": impl, "mode": mode, "check": "peak bytes", "baseline": base.iloc[-1], "now": now.iloc[-1],
             "change": change, "p": math.nan, "by_n": _by_n(changes), "regressed": change > tolerances.memory}
        )  # fmt: skip
    return pd.DataFrame.from_records(records)


def _exponent(cells: pd.DataFrame, values: pd.Series) -> float:
    fit = asymptotic_fit(cells["seq_len"], values)
    return fit.exponent if fit else math.nan


def exponent_regressions(paired: pd.DataFrame, tolerances: Tolerances) -> pd.DataFrame:
    """Per entry and mode: time and memory exponents in N, now and in the baseline, against the declared one."""
    records = []
    for (impl, mode), cells in paired.groupby(["impl", "mode"], sort=True):
        for check, declared, value in (
            ("time exponent", "declared_time_exponent_fresh", "ratio"),
            ("memory exponent", "declared_memory_exponent_fresh", "peak_bytes"),
        ):
            complexity = declared.replace("_exponent_", "_complexity_")
            if value == "ratio":
                base, now = (_exponent(cells, cells[f"ratio_{side}"].map(np.median)) for side in ("base", "fresh"))
            else:
                base, now = (_exponent(cells, cells[f"peak_bytes_{side}"]) for side in ("base", "fresh"))
            expected = float(cells[declared].iloc[0])
            span = asymptotic_fit(cells["seq_len"], cells["seq_len"])  # the N range the exponents are fitted over
            if complexity in cells and span:  # a log(N) factor adds the slope it has over that range
                expected = declared_slope(expected, cells[complexity].iloc[0], span.n_min, span.n_max)
            allowed = np.nanmax([expected, base]) + tolerances.exponent
            records.append(
                {"impl": impl, "mode": mode, "check": check, "baseline": base, "now": now, "change": now - base,
                 "p": math.nan, "by_n": f"declared {expected:g}, fit over N={cells['seq_len'].min()}-"
                 f"{cells['seq_len'].max()}", "regressed": bool(now > allowed)}
            )  # fmt: skip
    return pd.DataFrame.from_records(records)


def compare(base: pd.DataFrame, fresh: pd.DataFrame, tolerances: Tolerances) -> tuple[pd.DataFrame, int, list[str]]:
    """Every comparison (regressed says which failed), how many cells were paired, and what could not be compared."""
    paired, missing = _paired(base, fresh)
    if paired.empty:
        return pd.DataFrame(columns=CHECK_COLUMNS), 0, missing
    table = pd.concat(
        [
            time_regressions(paired, tolerances),
            memory_regressions(paired, tolerances),
            exponent_regressions(paired, tolerances),
        ],
        ignore_index=True,
    )
    return table, len(paired), missing


def confirm(table: pd.DataFrame, rerun: pd.DataFrame, column: str) -> pd.DataFrame:
    """The table with a re-run's change beside each figure; a figure stays regressed only if the re-run flags it too."""
    keys = ["impl", "mode", "check"]
    again = rerun.set_index(keys)[["change", "regressed"]].rename(columns={"change": column, "regressed": "again"})
    joined = table.join(again, on=keys)
    joined["regressed"] = joined["regressed"] & joined["again"].eq(True)
    return joined.drop(columns="again")


def _format(table: pd.DataFrame) -> str:
    """Figures as a text table: time as time/reference ratios at the largest N, memory in MiB there."""

    def number(check: str, value: float) -> str:
        if math.isnan(value):
            return "-"
        return f"{value / 2**20:.2f} MiB" if check == "peak bytes" else f"{value:.3g}"

    def change(check: str, value: float) -> str:
        if math.isnan(value):
            return "-"
        return f"{value:+.2f}" if check.endswith("exponent") else f"{100 * value:+.1f}%"

    checks = table["check"].tolist()
    reruns = [column for column in table.columns if column.startswith("re-run")]
    shown = pd.DataFrame(
        {
            "impl": table["impl"],
            "mode": table["mode"],
            "check": checks,
            "baseline": [number(c, v) for c, v in zip(checks, table["baseline"], strict=True)],
            "now": [number(c, v) for c, v in zip(checks, table["now"], strict=True)],
            "change": [change(c, v) for c, v in zip(checks, table["change"], strict=True)],
            **{rerun: [change(c, v) for c, v in zip(checks, table[rerun], strict=True)] for rerun in reruns},
            "p": ["-" if math.isnan(p) else f"{p:.1g}" for p in table["p"]],
            "by N": table["by_n"],
        }
    )
    return shown.to_string(index=False, justify="left")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        """One line on stderr and exit 2 (argparse would print its usage first)."""
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench.check", description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--baseline", type=Path, help="the baseline folder to compare with")
    target.add_argument("--refresh-baseline", type=Path, metavar="DIR", help="run the suite and save it as DIR")
    parser.add_argument("results_dir", nargs="?", type=Path, help="a saved suite run; omitted: run the suite now")
    parser.add_argument("--out", type=Path, help="where a new run goes (default results/check/<time>)")
    parser.add_argument("--time-tolerance", type=float, default=TIME_TOLERANCE, help="relative, e.g. 0.10")
    parser.add_argument("--memory-tolerance", type=float, default=MEMORY_TOLERANCE, help="relative, e.g. 0.10")
    parser.add_argument("--exponent-tolerance", type=float, default=EXPONENT_TOLERANCE, help="absolute, e.g. 0.35")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="Mann-Whitney significance level")
    parser.add_argument(
        "--confirm", type=int, default=CONFIRM_RUNS, help="re-runs of flagged entries that must flag them again"
    )
    parser.add_argument(
        "--zoo-import", action="append", default=[], metavar="MODULE", help="modules that register entries"
    )
    parser.add_argument("--runs", type=int, default=BASELINE_RUNS, help="suite runs in a refreshed baseline")
    parser.add_argument("--rounds", type=int, help="timed rounds per cell of a new run (default: the suite's)")
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
    if args.refresh_baseline:
        if args.results_dir:
            parser.error("--refresh-baseline runs the suite itself: drop RESULTS_DIR")
        return refresh_baseline(args.refresh_baseline, args.runs, args.zoo_import, args.select, args.rounds)

    try:
        baseline, base_env = load_baseline(args.baseline)
    except CheckError as error:
        parser.error(str(error))
    ran_here = args.results_dir is None
    new_run_dir = args.out or REPO / "results" / "check" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    results_dir = args.results_dir or new_run_dir
    # runs made here wait for the machine to be as quiet as it was for the baseline (bench/regression_suite.py)
    quiet_ms = base_env["reference_ms"]
    suite_status = 0
    if ran_here:
        suite_status = run_suite(
            results_dir, args.zoo_import, args.select, rounds=args.rounds, quiet_reference_ms=quiet_ms
        )
    try:
        fresh, fresh_env = load_suite(results_dir)
    except CheckError as error:
        if suite_status:
            print(f"bench.check: the suite failed (pytest exit {suite_status}) before writing results", file=sys.stderr)
            return 1
        parser.error(str(error))
    if fresh_env["suite_method"] != base_env["suite_method"]:
        parser.error(
            f"{results_dir} was measured as '{fresh_env['suite_method']}', the baseline as "
            f"'{base_env['suite_method']}': refresh the baseline (--refresh-baseline)"
        )
    fresh_env.update(reference_ms=median_reference_ms(fresh), waited_s=float(fresh["waited_s"].sum()))

    tolerances = Tolerances(args.time_tolerance, args.memory_tolerance, args.exponent_tolerance, args.alpha)
    table, n_cells, missing = compare(baseline, fresh, tolerances)
    flagged = table[table["regressed"]]
    for attempt in range(1, (args.confirm if ran_here else 0) + 1):
        entries = set(table.loc[table["regressed"], ["impl", "mode"]].itertuples(index=False, name=None))
        if not entries:
            break
        cells = fresh[[(impl, mode) in entries for impl, mode in zip(fresh["impl"], fresh["mode"], strict=True)]]
        print(f"bench.check: re-measuring the {len(entries)} flagged entry/mode pairs in a new process", flush=True)
        rerun_dir = results_dir / f"confirm-{attempt}"
        node_ids = cells["nodeid"].tolist()
        suite_status |= run_suite(
            rerun_dir, args.zoo_import, node_ids=node_ids, rounds=args.rounds, quiet_reference_ms=quiet_ms
        )
        try:
            rerun, _ = load_suite(rerun_dir)
        except CheckError:
            break  # it failed before writing results: suite_status says so, and the figures stay flagged
        fresh_env["waited_s"] += float(rerun["waited_s"].sum())
        table = confirm(table, compare(baseline, rerun, tolerances)[0], f"re-run {attempt}")
    print(report(table, flagged, n_cells, missing, base_env, fresh_env, suite_status, confirmed=ran_here))
    return 1 if suite_status or table["regressed"].any() else 0


def _machine(env: dict) -> str:
    cpu = env.get("cpu", {}).get("brand_raw", "unknown CPU")
    return f"{cpu}, torch {env.get('torch_version', '?')}, commit {env.get('commit', '')[:10] or '?'}"


def report(
    table: pd.DataFrame,
    flagged: pd.DataFrame,
    n_cells: int,
    missing: list[str],
    base_env: dict,
    fresh_env: dict,
    suite_status: int,
    confirmed: bool,
) -> str:
    """What the check prints: machines, regressions (or none), what could not be compared, and a verdict."""
    lines = [
        f"baseline: {_machine(base_env)} ({base_env['runs']} runs pooled)",
        f"this run: {_machine(fresh_env)}",
        f"reference attention (median): {base_env['reference_ms']:.2f} ms in the baseline, "
        f"{fresh_env['reference_ms']:.2f} ms in this run; waited {fresh_env['waited_s']:.0f} s for a quiet machine",
    ]
    regressed = table[table["regressed"]]
    lines.append(
        f"compared {len(table)} figures of {table['impl'].nunique()} entries ({n_cells} cells): time / ref, "
        "peak bytes, time and memory exponents in N, per entry and mode"
    )
    if fresh_env["reference_ms"] > BUSY_WARNING * base_env["reference_ms"]:
        busier = fresh_env["reference_ms"] / base_env["reference_ms"] - 1
        lines.append(
            f"warning: the machine was busier than for the baseline (reference {100 * busier:+.0f}%): entries "
            "slow differently under load, so time figures move more than usual"
        )
    if missing:
        lines += [f"could not compare {len(missing)}:"] + [f"  {line}" for line in missing]
    if suite_status:
        lines.append(f"REGRESSION: the suite itself failed (pytest exit {suite_status}); see its output above")
    keys = ["impl", "mode", "check"]
    dismissed = table[~table["regressed"]].merge(flagged[keys], on=keys)
    if not dismissed.empty:
        lines += [f"flagged in the first run but not again when re-measured ({len(dismissed)}), not regressions:",
                  _format(dismissed)]  # fmt: skip
    if not flagged.empty and not confirmed:
        lines.append("(a saved run is compared as it is: flagged figures are not re-measured)")
    if regressed.empty:
        lines.append("no regression" if not suite_status else "no regression among the cells that ran")
    else:
        names = ", ".join(sorted(regressed["impl"].unique()))
        lines += [f"REGRESSION in {names}:", _format(regressed.sort_values(["impl", "mode"], kind="stable"))]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
