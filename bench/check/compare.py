"""Comparing two sets of suite runs per entry and mode: what got slower, hungrier or steeper.

The two sides are a baseline and a fresh run (`--baseline`), or a base commit and the working tree
measured in turn on this host (`--base`, bench/check/same_host.py). Compared per entry and mode, over the N
of the suite, so that a change to an entry's code (which shows at every N) stands out from one noisy cell:
- time: each round's time divided by the reference attention timed just before it (bench/check/suite.py).
  Regressed when the median over N of the change in median ratio exceeds the time tolerance AND a
  one-sided Mann-Whitney U test over the pooled rounds says the growth is not chance (p < alpha), as
  asv does. The tolerance guards against drift between runs, which the test alone would call significant.
- peak memory: regressed when peak bytes (plus MEMORY_SLACK_BYTES on both sides, for page granularity)
  grew by more than the memory tolerance at every N but one.
- exponents: the time and memory exponents fitted over N (bench/fit.py) must stay within the exponent
  tolerance of the declared complexity, or of the first side's fit where that was already higher (a
  baseline cannot fail its own check).
A figure is confirmed by a re-run: `confirm` keeps it regressed only when the re-run flags it too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from bench.check.runs import KEY
from bench.fit import asymptotic_fit, declared_slope

# Tolerances, set from the drift measured between suite runs on a shared 2-core VM (README, "Tolerances")
TIME_TOLERANCE = 0.10
MEMORY_TOLERANCE = 0.10
MEMORY_SLACK_BYTES = 256 * 1024
# a fitted exponent this far above the declared one (or the first side's) is a regression; the report's is fit.py's
GATE_EXPONENT_TOLERANCE = 0.35
ALPHA = 0.01
CHECK_COLUMNS = ["impl", "mode", "check", "baseline", "now", "change", "p", "by_n", "regressed"]


@dataclass(frozen=True)
class Tolerances:
    time: float = TIME_TOLERANCE
    memory: float = MEMORY_TOLERANCE
    exponent: float = GATE_EXPONENT_TOLERANCE
    alpha: float = ALPHA


@dataclass(frozen=True)
class Sides:
    """How the two sides of a comparison are named in what could not be compared."""

    only_first: str = "in the baseline, not measured in this run"
    only_second: str = "not in the baseline (refresh it to start tracking)"
    select: str | None = None  # the second side's -k: the first side's cells outside it are one line


BASELINE_SIDES = Sides()
AB_SIDES = Sides(only_first="only at the base commit", only_second="only in the working tree")


def _paired(base: pd.DataFrame, fresh: pd.DataFrame, sides: Sides) -> tuple[pd.DataFrame, list[str]]:
    """The cells measured on both sides with the same hyperparameters, and a line for what is not.

    An entry on one side only is one line, as are the first side's cells left out by the second's -k.
    """
    merged = base.merge(fresh, on=KEY, how="outer", suffixes=("_base", "_fresh"), indicator="side")
    pairs = zip(merged["side"], merged["hparams_base"], merged["hparams_fresh"], strict=True)
    merged["comparable"] = [side == "both" and same_call(a, b) for side, a, b in pairs]
    missing, outside_select = [], 0
    for impl, cells in merged.groupby("impl", sort=True):
        one_side = cells["side"].unique()
        if len(one_side) == 1 and one_side[0] != "both":
            if one_side[0] == "left_only" and sides.select:
                outside_select += len(cells)
                continue
            where = sides.only_first if one_side[0] == "left_only" else sides.only_second
            missing.append(f"{impl}: {where} ({len(cells)} cells)")
            continue
        for row in cells.sort_values(["mode", "seq_len"]).itertuples():
            cell = f"{row.impl} {row.mode} N={row.seq_len}"
            if row.side == "left_only" and sides.select:
                outside_select += 1
            elif row.side == "left_only":
                missing.append(f"{cell}: {sides.only_first}")
            elif row.side == "right_only":
                missing.append(f"{cell}: {sides.only_second}")
            elif not row.comparable:
                missing.append(f"{cell}: hyperparameters differ ({row.hparams_base} -> {row.hparams_fresh})")
    if outside_select:
        missing.append(f"{outside_select} cells outside -k {sides.select!r}, not measured")
    # astype: an empty table's column is not boolean, and indexing by it would select columns
    return merged[merged["comparable"].astype(bool)].drop(columns=["side", "comparable"]), missing


def same_call(first: str, second: str) -> bool:
    """Whether two sides' hyperparameters (JSON) are the same call of the entry: every name both have takes
    the same value. A name on one side only was added (or removed) since, at its default there, so a caller
    passing the shared ones gets exactly what each side measured: a chunk size added to make an entry
    faster is what the comparison is for."""
    a, b = json.loads(first), json.loads(second)
    return all(a[name] == b[name] for name in a.keys() & b.keys())


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

    Peaks are read while every large block has pages of its own (bench/core/memory.py), so they repeat to a
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


def compare(
    base: pd.DataFrame, fresh: pd.DataFrame, tolerances: Tolerances, sides: Sides = BASELINE_SIDES
) -> tuple[pd.DataFrame, int, list[str]]:
    """Every comparison (regressed says which failed), how many cells were paired, and what could not be compared."""
    paired, missing = _paired(base, fresh, sides)
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


def format_table(table: pd.DataFrame, first: str = "baseline") -> str:
    """Figures as a text table: time as time/reference ratios at the largest N, memory in MiB there.

    first: the heading of the first side's column ("baseline", or "base" in an A/B).
    """

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
            first: [number(c, v) for c, v in zip(checks, table["baseline"], strict=True)],
            "now": [number(c, v) for c, v in zip(checks, table["now"], strict=True)],
            "change": [change(c, v) for c, v in zip(checks, table["change"], strict=True)],
            **{rerun: [change(c, v) for c, v in zip(checks, table[rerun], strict=True)] for rerun in reruns},
            "p": ["-" if math.isnan(p) else f"{p:.1g}" for p in table["p"]],
            "by N": table["by_n"],
        }
    )
    return shown.to_string(index=False, justify="left")


def largest_changes(table: pd.DataFrame) -> str:
    """The largest change of each check and where it was, e.g. "time / ref +2.3% (sliding_window fwd)"."""
    parts = []
    for check in ("time / ref", "peak bytes", "time exponent", "memory exponent"):
        figures = table[(table["check"] == check) & table["change"].notna()]
        if not figures.empty:
            row = figures.loc[figures["change"].idxmax()]
            change = f"{row['change']:+.2f}" if check.endswith("exponent") else f"{100 * row['change']:+.1f}%"
            parts.append(f"{check} {change} ({row['impl']} {row['mode']})")
    return ", ".join(parts)


def flagged_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The figures a table flags, its columns kept (an empty table's "regressed" column is not boolean, and
    indexing by it would select columns instead of rows)."""
    return table[table["regressed"].astype(bool)]


def flagged_pairs(*tables: pd.DataFrame) -> set[tuple[str, str]]:
    """The (entry, mode) pairs any of the tables flags."""
    flagged = pd.concat([flagged_rows(table)[["impl", "mode"]] for table in tables])
    return set(flagged.itertuples(index=False, name=None))
