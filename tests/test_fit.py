"""Exponent fits and crossovers (bench.fit) on synthetic curves whose answers are known."""

import math

import numpy as np
import pandas as pd
import pytest

from bench import fit

SIZES = 2.0 ** np.arange(7, 15)  # 128 .. 16384


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_fit_recovers_known_exponent_under_5_percent_noise(exponent):
    rng = np.random.default_rng(int(exponent))
    y = 3e-6 * SIZES**exponent * rng.lognormal(0.0, 0.05, SIZES.size)
    for fitted in (fit.fit_exponent(SIZES, y), fit.asymptotic_fit(SIZES, y)):
        assert fitted.exponent == pytest.approx(exponent, abs=0.05)
        assert fitted.r2 > 0.99
    everything = fit.fit_exponent(SIZES, y)
    assert (everything.n_min, everything.n_max, everything.points) == (128, 16384, 8)


def test_asymptotic_fit_sees_through_fixed_overhead():
    # an O(N^2) kernel behind a 0.1 ms fixed cost: flat at small N
    y = 0.1 + 1e-6 * SIZES**2
    everything, top = fit.fit_exponent(SIZES, y), fit.asymptotic_fit(SIZES, y)
    assert everything.exponent < 1.7
    assert top.exponent == pytest.approx(2.0, abs=0.1)
    assert (top.n_min, top.n_max, top.points) == (2048, 16384, 4)  # N >= sqrt(128 * 16384) = 1448


def test_asymptotic_fit_keeps_at_least_three_sizes():
    top = fit.asymptotic_fit([256, 512, 1024, 2048], [1.0, 2.0, 4.0, 8.0])
    assert (top.n_min, top.points) == (512, 3)
    assert top.exponent == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("n", "y"),
    [([], []), ([512], [1.0]), ([512, 512], [1.0, 2.0]), ([256, 512], [0.0, float("nan")])],
    ids=["empty", "one-point", "one-size", "no-positive-values"],
)
def test_fit_needs_two_distinct_sizes_with_positive_values(n, y):
    assert fit.fit_exponent(n, y) is None
    assert fit.asymptotic_fit(n, y) is None


def test_crossover_is_interpolated_on_log_log_axes():
    # t_base = 1e-6 N^2 and t_impl = 3e-3 N cross at N = 3000 exactly; both are lines in log-log,
    # so interpolation between the bracketing sizes 2048 and 4096 is exact
    crossing = fit.crossover(SIZES, 3e-3 * SIZES, 1e-6 * SIZES**2)
    assert crossing == pytest.approx(3000.0, rel=1e-9)


def test_crossover_at_the_smallest_size_and_out_of_range():
    base = 1e-6 * SIZES**2
    assert fit.crossover(SIZES, base / 2, base) == 128.0  # wins everywhere: reported as N_min
    assert fit.crossover(SIZES, base * 2, base) is None  # never wins
    assert fit.crossover([], [], []) is None


def test_crossover_ignores_an_early_win_that_does_not_last():
    n = [256, 512, 1024, 2048]
    impl = [0.9, 1.1, 1.2, 0.5]  # wins at 256 by noise, loses at 512 and 1024, wins from there
    crossing = fit.crossover(n, impl, [1.0, 1.0, 1.0, 1.0])
    assert 1024 < crossing < 2048


def test_crossover_takes_the_median_of_repeated_sizes():
    n = [1000, 1000, 1000, 4000]
    crossing = fit.crossover(n, [1.0, 9.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0])
    assert crossing == 1000.0  # the median at N=1000 wins, so the outlier does not move it


def _rows(impl, exponent, declared, sizes=SIZES, **columns):
    return pd.DataFrame(
        {
            "impl": impl,
            "seq_len": sizes,
            "status": "ok",
            "time_ms_median": 1e-3 * sizes**exponent,
            "declared_time_exponent": declared,
            **columns,
        }
    )


def test_fitted_exponents_per_group_flags_a_wrong_declaration():
    rows = pd.concat(
        [
            _rows("quadratic", 2.0, 2.0, causal=False),
            _rows("quadratic", 2.0, 2.0, causal=True),
            _rows("mislabelled", 2.0, 1.0, causal=False),
            # a failed cell with a wild value must not enter the fit
            pd.DataFrame([{"impl": "quadratic", "seq_len": 32768.0, "status": "oom", "time_ms_median": 1.0,
                           "declared_time_exponent": 2.0, "causal": False}]),
        ]
    )  # fmt: skip
    table = fit.fitted_exponents(rows, groupby=["impl", "causal"]).set_index(["impl", "causal"])
    assert len(table) == 3
    assert table["exponent"].to_numpy() == pytest.approx([2.0, 2.0, 2.0])
    assert table.loc[("quadratic", False), "n_max"] == 16384
    assert table.loc[("mislabelled", False), "disagrees"]
    assert not table.loc[("quadratic", True), "disagrees"]


def test_crossovers_per_series_against_the_baseline():
    rows = pd.concat(
        [
            _rows("flash", 2.0, 2.0),
            _rows("linear", 1.0, 1.0).assign(time_ms_median=3.0 * SIZES),  # crosses 1e-3 N^2 at N = 3000
            _rows("always_faster", 2.0, 2.0).assign(time_ms_median=5e-4 * SIZES**2),
            _rows("full", 2.0, 2.0),
            _rows("elsewhere", 1.0, 1.0, sizes=np.array([7.0, 9.0])),
        ]
    )
    table = fit.crossovers(rows, baseline="flash", exclude=["full"]).set_index("impl")
    assert sorted(table.index) == ["always_faster", "elsewhere", "linear"]
    assert table.loc["linear", "crossover_n"] == pytest.approx(3000.0)
    assert not table.loc["linear", "wins_at_n_min"]
    assert table.loc["always_faster", "wins_at_n_min"]
    assert math.isnan(table.loc["elsewhere", "n_min"])  # no size in common with the baseline
