"""`python -m bench.check`: catches slowdowns, memory growth and complexity blow-ups, and stays quiet on noise.

The first tests feed the comparison suite files with known effects under lognormal noise; the last one
runs the real suite twice on a few entries and then with regressions injected into three of them.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import check
from bench.environment import REPO

SEQ_LENS = (256, 512, 1024, 2048)
ROUNDS = 15
NOISE = 0.04  # lognormal sigma of one round's ratio
# the tolerances of back-to-back runs, tighter than the defaults set for the drift between runs far apart
TIGHT = ["--time-tolerance", "0.10", "--exponent-tolerance", "0.25"]


def _suite_file(folder, entries, seed):
    """A suite JSON: entries maps impl -> (time exponent, ms at N=256, peak-bytes exponent, bytes at 256, slowdown)."""
    rng = np.random.default_rng(seed)
    benchmarks = []
    for impl, (time_exp, ms, mem_exp, peak, slowdown) in entries.items():
        for n in SEQ_LENS:
            scale = n / SEQ_LENS[0]
            reference_ms = 2.0 * rng.lognormal(0, NOISE, ROUNDS)
            ratio = ms * scale**time_exp * slowdown * rng.lognormal(0, NOISE, ROUNDS) / 2.0
            benchmarks.append(
                {
                    "extra_info": {
                        "impl": impl, "mode": "fwd", "seq_len": n, "causal": False, "hparams": {"window": 32},
                        "declared_time_exponent": 1.0 if impl.startswith("lin") else 2.0,
                        "declared_memory_exponent": 1.0 if impl.startswith("lin") else 2.0,
                        "reference_ms": reference_ms.tolist(), "peak_bytes": int(peak * scale**mem_exp),
                    },
                    "stats": {"data": (ratio * reference_ms / 1e3).tolist()},
                }
            )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    saved = {"machine_info": {"cpu": {"brand_raw": "test CPU"}}, "commit_info": {"id": "abc"}, "benchmarks": benchmarks}
    (folder / check.SUITE_JSON).write_text(json.dumps(saved))
    return folder


HEALTHY = {
    "lin_a": (1.0, 1.0, 1.0, 4 * 2**20, 1.0),
    "lin_b": (1.0, 3.0, 1.0, 8 * 2**20, 1.0),
    "quad": (2.0, 2.0, 2.0, 16 * 2**20, 1.0),
}


def _check(tmp_path, fresh_entries, capsys, seed=1):
    base = _suite_file(tmp_path / "base", HEALTHY, seed=0)
    fresh = _suite_file(tmp_path / "fresh", fresh_entries, seed=seed)
    status = check.main(["--baseline", str(base), str(fresh), *TIGHT])
    return status, capsys.readouterr().out


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_noise_alone_is_no_regression(tmp_path, capsys, seed):
    status, out = _check(tmp_path, HEALTHY, capsys, seed=seed)
    assert status == 0, out
    assert "no regression" in out
    assert "compared 12 figures of 3 entries (12 cells)" in out


def test_twenty_percent_slower_entry_is_named(tmp_path, capsys):
    status, out = _check(tmp_path, {**HEALTHY, "lin_b": (1.0, 3.0, 1.0, 8 * 2**20, 1.2)}, capsys)
    assert status == 1
    regressions = out.split("REGRESSION in ")[1]
    assert regressions.startswith("lin_b:")
    assert regressions.count("time / ref") == 1  # one line per entry and mode, its changes by N beside it
    assert "lin_a" not in regressions and "quad" not in regressions


def _check_edited(tmp_path, capsys, edit):
    """The healthy suites, with edit(benchmark) applied to every benchmark of the fresh one: the check's status."""
    base = _suite_file(tmp_path / "base", HEALTHY, seed=0)
    fresh = _suite_file(tmp_path / "fresh", HEALTHY, seed=1)
    saved = json.loads((fresh / check.SUITE_JSON).read_text())
    for bench in saved["benchmarks"]:
        edit(bench)
    (fresh / check.SUITE_JSON).write_text(json.dumps(saved))
    status = check.main(["--baseline", str(base), str(fresh), *TIGHT])
    return status, capsys.readouterr().out


def test_a_few_slow_rounds_are_no_regression(tmp_path, capsys):
    def neighbours_burst(bench):
        bench["stats"]["data"][:3] = [3 * t for t in bench["stats"]["data"][:3]]

    status, out = _check_edited(tmp_path, capsys, neighbours_burst)
    assert status == 0, out


def test_one_cell_in_new_pages_is_no_memory_regression(tmp_path, capsys):
    def more_pages_at_512(bench):  # seen on this machine: full's peak at one N moved by +46%
        if bench["extra_info"]["seq_len"] == 512:
            bench["extra_info"]["peak_bytes"] = int(1.5 * bench["extra_info"]["peak_bytes"])

    status, out = _check_edited(tmp_path, capsys, more_pages_at_512)
    assert status == 0, out


def test_twice_the_memory_is_named(tmp_path, capsys):
    status, out = _check(tmp_path, {**HEALTHY, "quad": (2.0, 2.0, 2.0, 32 * 2**20, 1.0)}, capsys)
    assert status == 1
    regressions = out.split("REGRESSION in ")[1]
    assert regressions.startswith("quad:")
    assert regressions.count("peak bytes") == 1
    assert "512:+100%" in regressions


def test_linear_entry_made_quadratic_is_named(tmp_path, capsys):
    status, out = _check(tmp_path, {**HEALTHY, "lin_a": (2.0, 1.0, 2.0, 4 * 2**20, 1.0)}, capsys)
    assert status == 1
    regressions = out.split("REGRESSION in ")[1]
    assert regressions.startswith("lin_a:")
    assert "time exponent" in regressions and "memory exponent" in regressions


def test_comparisons_it_cannot_make_are_listed(tmp_path, capsys):
    fresh = {"lin_a": HEALTHY["lin_a"], "quad": HEALTHY["quad"], "new_entry": HEALTHY["lin_a"]}
    status, out = _check(tmp_path, fresh, capsys)
    assert status == 0
    assert "could not compare 8:" in out
    assert "lin_b fwd N=2048: in the baseline, not measured in this run" in out
    assert "new_entry fwd N=256: not in the baseline (refresh it to start tracking)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baseline", "nowhere"], "nowhere holds no benchmark.json"),
        (["--baseline", "{base}", "--time-tolerance", "0"], "--time-tolerance=0.0 is invalid: it must be positive"),
        (["--refresh-baseline", "{base}", "{base}"], "--refresh-baseline runs the suite itself: drop RESULTS_DIR"),
        (["{base}"], "one of the arguments --baseline --refresh-baseline is required"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, args, message):
    base = _suite_file(tmp_path / "base", HEALTHY, seed=0)
    with pytest.raises(SystemExit) as exit_info:
        check.main([a.format(base=base) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def _run_check(*args):
    # the suite's own subprocess must see tests/ (the injected regressions) on its path, as here
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bench.check", *args], cwd=REPO, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("ZOO_TIMING_TESTS"),
    reason="timed end to end on this machine; flaky on a shared VM (1 failure in 3 runs): set ZOO_TIMING_TESTS=1",
)
def test_real_suite_catches_injected_regressions(tmp_path):
    """Baseline, a clean run (passes), and a run with tests/bench_regressions.py injected (names each entry)."""
    select = [
        "-k",
        "fwd and (linformer or full or sliding_window or performer) and not peer and not flex",
        "--rounds",
        "8",
    ]
    base = tmp_path / "base"
    refreshed = _run_check("--refresh-baseline", str(base), "--runs", "1", *select)
    assert refreshed.returncode == 0, refreshed.stdout[-3000:] + refreshed.stderr[-3000:]

    # at the default tolerances: a one-run baseline and 8 rounds drift by more than 10% on a shared machine
    clean = _run_check("--baseline", str(base), "--out", str(tmp_path / "clean"), *select)
    assert clean.returncode == 0, clean.stdout[-1500:]
    assert "compared 16 figures of 4 entries (16 cells)" in clean.stdout
    assert "no regression" in clean.stdout

    bad = _run_check("--baseline", str(base), "--out", str(tmp_path / "bad"), "--zoo-import", "tests.bench_regressions",
                     *select, *TIGHT)  # fmt: skip
    assert bad.returncode == 1, bad.stdout[-3000:]
    regressions = bad.stdout.split("REGRESSION in ")[1]
    assert regressions.startswith("full, linformer, sliding_window:")
    checks = ("time / ref", "peak bytes", "time exponent", "memory exponent")
    rows = regressions.splitlines()[2:]  # after the names and the table's header
    found = {(row.split()[0], name) for row in rows for name in checks if name in row}
    assert ("linformer", "time / ref") in found
    assert ("full", "peak bytes") in found
    assert ("sliding_window", "time exponent") in found and ("sliding_window", "memory exponent") in found
    assert all(row.split()[0] != "performer" for row in rows)
