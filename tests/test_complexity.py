"""Declared complexities with a log(N) factor, read by the fits; entries declaring their regression-suite sizes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import attention_zoo as z
from attention_zoo.registry import Complexity
from bench import fit
from bench.check import suite as regression_suite


@pytest.mark.parametrize(
    ("expr", "exponent", "log_power"),
    [("N^2", 2, 0), ("N*w", 1, 0), ("N*log(N)", 1, 1), ("n_h*N*(c*d+log(N))", 1, 1), ("N*log(N)^2", 1, 2)],
)
def test_log_factor_is_not_a_power_of_n(expr: str, exponent: float, log_power: float) -> None:
    assert Complexity(expr).exponent == exponent
    assert Complexity(expr).log_power == log_power


def test_n_log_n_reads_a_little_above_one_over_a_range() -> None:
    slope = Complexity("N*log(N)").slope(1024, 16384)
    n = np.array([1024, 16384])
    assert slope == pytest.approx(np.diff(np.log(n * np.log(n)))[0] / np.diff(np.log(n))[0])
    assert 1.1 < slope < 1.13
    assert Complexity("N^2").slope(1024, 16384) == 2


def test_fitted_exponents_compare_n_log_n_with_its_slope_over_the_fitted_range() -> None:
    n = np.array([1024, 2048, 4096, 8192, 16384])
    rows = pd.DataFrame(
        {"impl": "lsh", "status": "ok", "seq_len": n, "time_ms_median": 1e-3 * n * np.log(n) ** 3,
         "declared_time_exponent": 1.0, "time_complexity": "O(N*log(N)^3)"}
    )  # fmt: skip
    plain = fit.fitted_exponents(rows, tolerance=0.25)
    assert plain["disagrees"].item()  # read as a power law, log(N)^3 looks like N^1.35 over this range
    aware = fit.fitted_exponents(rows, tolerance=0.25, complexity="time_complexity")
    assert aware["declared"].item() == pytest.approx(aware["exponent"].item(), abs=0.02)
    assert not aware["disagrees"].item()


def test_entries_declare_their_suite_sizes_over_the_suites_names() -> None:
    assert regression_suite.suite_hparams("bigbird")["block_size"] == 32
    assert regression_suite.suite_hparams("reformer_lsh")["bucket_size"] == 32
    assert (
        regression_suite.suite_hparams("linear_attention")["causal_chunk"] == regression_suite.HPARAMS["causal_chunk"]
    )
    with pytest.raises(ValueError, match="suite_hparams"):
        z.register(family="full", exact=True, time="N^2", memory="N^2", suite_hparams={"nope": 1}, name="bad_suite")(
            lambda problem, *, size=1: None
        )
