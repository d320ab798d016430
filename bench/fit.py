"""Power-law fits in N and crossover points: the numbers behind the report's complexity claims.

Used by the report and by the regression check; every function takes plain arrays or a tidy
results frame (docs/rows.md) and never plots or formats.

Which exponent is "the" exponent: fixed costs (Python dispatch, kernel launch, allocation) flatten
a curve at small N, so a least-squares slope over every point underestimates the asymptotic growth
(an O(N^2) kernel fits ~1.6 over 64..16384 on CPU). The reported exponent is therefore the slope
over the upper half of the measured N range on a log scale (N >= sqrt(N_min * N_max)), widened to
the largest `ASYMPTOTIC_MIN_POINTS` distinct N when that half holds fewer, so one noisy point
cannot set it. The all-points slope is reported beside it for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attention_zoo.complexity import Complexity

ASYMPTOTIC_MIN_POINTS = 3
# the report flags a fitted exponent this far from the declared one (a description: the gate has its own)
DECLARED_EXPONENT_TOLERANCE = 0.25


@dataclass(frozen=True)
class Fit:
    """A least-squares line through log(y) against log(N): y ~ exp(intercept) * N^exponent."""

    exponent: float
    intercept: float
    r2: float
    n_min: int
    n_max: int
    points: int


def _positive_points(n, y) -> tuple[np.ndarray, np.ndarray]:
    """The (N, y) pairs a log-log fit can use: finite and positive (a zero peak has no logarithm)."""
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(n) & np.isfinite(y) & (n > 0) & (y > 0)
    return n[keep], y[keep]


def fit_exponent(n, y) -> Fit | None:
    """The power-law fit of y against N over every usable point; None with fewer than two distinct N."""
    n, y = _positive_points(n, y)
    if np.unique(n).size < 2:
        return None
    log_n, log_y = np.log(n), np.log(y)
    exponent, intercept = np.polyfit(log_n, log_y, 1)
    ss_res = float(np.sum((log_y - (exponent * log_n + intercept)) ** 2))
    ss_tot = float(np.sum((log_y - log_y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return Fit(float(exponent), float(intercept), r2, int(n.min()), int(n.max()), int(n.size))


def asymptotic_fit(n, y) -> Fit | None:
    """The power-law fit over the upper half of the N range on a log scale (module docstring: why)."""
    n, y = _positive_points(n, y)
    distinct = np.unique(n)
    if distinct.size < 2:
        return None
    upper = distinct[distinct >= np.sqrt(distinct[0] * distinct[-1])]
    if upper.size < ASYMPTOTIC_MIN_POINTS:
        upper = distinct[-ASYMPTOTIC_MIN_POINTS:]
    keep = n >= upper[0]
    return fit_exponent(n[keep], y[keep])


def declared_slope(declared: float, complexity: object, n_min: float, n_max: float) -> float:
    """The declared exponent as a fit over n_min..n_max reads it: a log(N) factor in the declared
    complexity ("O(N*log(N))", or the bare "N*log(N)") adds the slope log(N) has there (0.12 over 1k..16k)."""
    if not isinstance(complexity, str) or not complexity or not np.isfinite(n_min) or not np.isfinite(n_max):
        return declared
    expr = complexity.removeprefix("O(").removesuffix(")") if complexity.startswith("O(") else complexity
    return Complexity(expr).slope(n_min, n_max)


def crossover(n, t_impl, t_base) -> float | None:
    """The smallest N from which the impl stays below the baseline, interpolated on log-log axes.

    "Stays below" means at every larger measured N, so a noisy win at small N followed by losses
    is not a crossover. Between the two measured N that bracket the last sign change of
    log(t_impl / t_base), the crossing is found by linear interpolation in log N. Returns the
    smallest measured N when the impl already wins there, and None when it does not win at the
    largest N measured by both (not in range). Repeated N are reduced to their median.
    """
    frame = pd.DataFrame({"n": n, "impl": t_impl, "base": t_base}).astype(float).reset_index(drop=True)
    frame = frame[np.isfinite(frame).all(axis=1) & (frame > 0).all(axis=1)]
    per_n = frame.groupby("n").median().sort_index()
    if per_n.empty:
        return None
    log_ratio = np.log(per_n["impl"].to_numpy() / per_n["base"].to_numpy())
    log_n = np.log(per_n.index.to_numpy())
    if log_ratio[-1] >= 0:
        return None
    losing = np.flatnonzero(log_ratio >= 0)
    if losing.size == 0:
        return float(per_n.index[0])
    i = losing[-1]
    frac = log_ratio[i] / (log_ratio[i] - log_ratio[i + 1])
    return float(np.exp(log_n[i] + frac * (log_n[i + 1] - log_n[i])))


def fitted_exponents(
    df: pd.DataFrame,
    groupby: Sequence[str] = ("impl",),
    value: str = "time_ms_median",
    declared: str | None = "declared_time_exponent",
    tolerance: float = DECLARED_EXPONENT_TOLERANCE,
    complexity: str | None = None,
) -> pd.DataFrame:
    """One row per group of ok cells: the asymptotic and all-points exponents of `value` in seq_len.

    Columns: the groupby columns, exponent, r2, n_min, n_max, points (of the asymptotic fit),
    exponent_all, r2_all (over every ok point), declared and disagrees (|exponent - declared| >
    tolerance; False where either is missing). Groups with fewer than two distinct N get NaN.
    With a `complexity` column (e.g. "time_complexity"), declared is read over the fit's N range
    (declared_slope: an N*log(N) entry is expected to fit a little above 1).
    """
    ok = df[df["status"] == "ok"]
    records = []
    for key, cells in ok.groupby(list(groupby), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        top = asymptotic_fit(cells["seq_len"], cells[value])
        everything = fit_exponent(cells["seq_len"], cells[value])
        expected = float(cells[declared].iloc[0]) if declared else np.nan
        if complexity and complexity in cells and top:
            expected = declared_slope(expected, cells[complexity].iloc[0], top.n_min, top.n_max)
        exponent = top.exponent if top else np.nan
        records.append(
            {
                **dict(zip(groupby, key, strict=True)),
                "exponent": exponent,
                "r2": top.r2 if top else np.nan,
                "n_min": top.n_min if top else np.nan,
                "n_max": top.n_max if top else np.nan,
                "points": top.points if top else 0,
                "exponent_all": everything.exponent if everything else np.nan,
                "r2_all": everything.r2 if everything else np.nan,
                "declared": expected,
                "disagrees": bool(abs(exponent - expected) > tolerance),  # NaN compares False
            }
        )
    columns = ["exponent", "r2", "n_min", "n_max", "points", "exponent_all", "r2_all", "declared", "disagrees"]
    return pd.DataFrame.from_records(records, columns=[*groupby, *columns])


def crossovers(
    df: pd.DataFrame,
    baseline: str,
    series: str = "impl",
    groupby: Sequence[str] = (),
    value: str = "time_ms_median",
    exclude: Sequence[str] = (),
) -> pd.DataFrame:
    """For each series other than the baseline, per group: where it starts beating the baseline in `value`.

    Columns: the groupby columns, the series column, crossover_n (NaN when not in range),
    wins_at_n_min (bool), n_min and n_max (the N range both measured, ok cells only; NaN when
    they share no N). Series named in `exclude` are left out.
    """
    ok = df[(df["status"] == "ok") & df[value].notna()]
    records = []
    groups = ok.groupby(list(groupby), sort=True, dropna=False) if groupby else [((), ok)]
    for key, cells in groups:
        key = key if isinstance(key, tuple) else (key,)
        base = cells[cells[series] == baseline].groupby("seq_len")[value].median()
        for name, own in cells.groupby(series, sort=True):
            if name == baseline or name in exclude:
                continue
            paired = pd.concat([own.groupby("seq_len")[value].median(), base], axis=1, join="inner").sort_index()
            n = paired.index.to_numpy(dtype=float)
            crossing = crossover(n, paired.iloc[:, 0], paired.iloc[:, 1]) if n.size else None
            records.append(
                {
                    **dict(zip(groupby, key, strict=True)),
                    series: name,
                    "crossover_n": np.nan if crossing is None else crossing,
                    "wins_at_n_min": crossing is not None and crossing == n[0],
                    "n_min": n.min() if n.size else np.nan,
                    "n_max": n.max() if n.size else np.nan,
                }
            )
    columns = [*groupby, series, "crossover_n", "wins_at_n_min", "n_min", "n_max"]
    return pd.DataFrame.from_records(records, columns=columns)
