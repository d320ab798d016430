"""`python -m bench.check`: catches slowdowns, memory growth and complexity blow-ups, and stays quiet on noise.

The first tests feed the comparison suite files with known effects under lognormal noise, all at the
default tolerances; the last one runs the real suite: a baseline, a clean run, and a run with
regressions injected into three entries.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from suite_files import HEALTHY, HOST, ROUNDS, SEQ_LENS, make_baseline, suite_file

from bench.check import baseline
from bench.check import cli as check
from bench.check import runs as suite_runs
from bench.check.checkout import REPO


def _check(tmp_path, fresh_entries, capsys, seed=1):
    fresh = suite_file(tmp_path / "fresh", fresh_entries, seed=seed)
    status = check.main(["--baseline", str(make_baseline(tmp_path)), str(fresh)])
    return status, capsys.readouterr().out


def _regressions(out):
    """The lines after the REGRESSION heading: the names, then the table."""
    return out.split("REGRESSION in ")[1]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_noise_alone_is_no_regression(tmp_path, capsys, seed):
    status, out = _check(tmp_path, HEALTHY, capsys, seed=seed)
    assert status == 0, out
    assert "no regression" in out
    assert "compared 12 figures of 3 entries (12 cells)" in out
    assert "(3 runs pooled)" in out
    assert "busier" not in out


def test_a_busier_machine_is_said(tmp_path, capsys):
    fresh = suite_file(tmp_path / "fresh", HEALTHY, seed=1, reference_ms=2.4)  # every ratio as before
    status = check.main(["--baseline", str(make_baseline(tmp_path)), str(fresh)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "warning: the machine was busier than for the baseline (reference +" in out


def test_twenty_percent_slower_entry_is_named(tmp_path, capsys):
    status, out = _check(tmp_path, {**HEALTHY, "lin_b": (1.0, 3.0, 1.0, 8 * 2**20, 1.2)}, capsys)
    assert status == 1
    regressions = _regressions(out)
    assert regressions.startswith("lin_b:")
    assert regressions.count("time / ref") == 1  # one line per entry and mode, its changes by N beside it
    assert "lin_a" not in regressions and "quad" not in regressions


def _check_edited(tmp_path, capsys, edit):
    """The healthy suites, with edit(benchmark) applied to every benchmark of the fresh one: the check's status."""
    fresh = suite_file(tmp_path / "fresh", HEALTHY, seed=1)
    saved = json.loads((fresh / suite_runs.SUITE_JSON).read_text())
    for bench in saved["benchmarks"]:
        edit(bench)
    (fresh / suite_runs.SUITE_JSON).write_text(json.dumps(saved))
    status = check.main(["--baseline", str(make_baseline(tmp_path)), str(fresh)])
    return status, capsys.readouterr().out


def test_a_few_slow_rounds_are_no_regression(tmp_path, capsys):
    def neighbours_burst(bench):
        bench["stats"]["data"][:3] = [3 * t for t in bench["stats"]["data"][:3]]

    status, out = _check_edited(tmp_path, capsys, neighbours_burst)
    assert status == 0, out


def test_one_cell_off_is_no_memory_regression(tmp_path, capsys):
    def more_pages_at_512(bench):
        if bench["extra_info"]["seq_len"] == 512:
            bench["extra_info"]["peak_bytes"] = int(1.5 * bench["extra_info"]["peak_bytes"])

    status, out = _check_edited(tmp_path, capsys, more_pages_at_512)
    assert status == 0, out


def test_twice_the_memory_is_named(tmp_path, capsys):
    status, out = _check(tmp_path, {**HEALTHY, "quad": (2.0, 2.0, 2.0, 32 * 2**20, 1.0)}, capsys)
    assert status == 1
    regressions = _regressions(out)
    assert regressions.startswith("quad:")
    assert regressions.count("peak bytes") == 1
    assert "512:+100%" in regressions


def test_linear_entry_made_quadratic_is_named(tmp_path, capsys):
    status, out = _check(tmp_path, {**HEALTHY, "lin_a": (2.0, 1.0, 2.0, 4 * 2**20, 1.0)}, capsys)
    assert status == 1
    regressions = _regressions(out)
    assert regressions.startswith("lin_a:")
    assert "time exponent" in regressions and "memory exponent" in regressions


def test_baseline_runs_are_pooled(tmp_path):
    """Every round of every run counts: a cell's baseline is the median over all of them, its peak their median."""
    base = make_baseline(tmp_path)
    pooled, environment = suite_runs.load_pooled(base)
    runs = [suite_runs.load_suite(base, path.name)[0] for path in sorted(base.glob("benchmark*.json"))]
    assert environment["runs"] == 3 and len(pooled) == len(runs[0]) == 12
    first = pooled.iloc[0]
    assert len(first["ratio"]) == 3 * ROUNDS
    assert np.array_equal(np.sort(first["ratio"]), np.sort(np.concatenate([run.iloc[0]["ratio"] for run in runs])))


def test_a_run_without_the_memory_pass_leaves_the_peaks_to_the_others(tmp_path):
    base = make_baseline(tmp_path, runs=2)
    second = base / "benchmark-2.json"
    saved = json.loads(second.read_text())
    for bench in saved["benchmarks"]:
        bench["extra_info"]["peak_bytes"] = None  # as --no-peaks writes it
    second.write_text(json.dumps(saved))
    pooled, _ = suite_runs.load_pooled(base)
    first, _ = suite_runs.load_suite(base)
    assert pooled["peak_bytes"].tolist() == first["peak_bytes"].astype(float).tolist()


def test_nothing_comparable_is_said_not_crashed_on(tmp_path, capsys):
    # every measured cell is new: the comparison's table is empty (its regressed column then holds no booleans)
    status, out = _check(tmp_path, {"new_entry": HEALTHY["lin_a"]}, capsys)
    assert status == 0, out
    assert "compared 0 figures of 0 entries" in out and "new_entry: not in the baseline" in out
    assert "no regression" in out


def test_comparisons_it_cannot_make_are_listed(tmp_path, capsys):
    fresh = {"lin_a": HEALTHY["lin_a"], "quad": HEALTHY["quad"], "new_entry": HEALTHY["lin_a"]}
    status, out = _check(tmp_path, fresh, capsys)
    assert status == 0
    assert "could not compare 2:" in out  # an entry on one side only is one line
    assert "lin_b: in the baseline, not measured in this run (4 cells)" in out
    assert "new_entry: not in the baseline (refresh it to start tracking) (4 cells)" in out


def test_a_hyperparameter_added_since_is_compared_and_a_changed_one_is_not(tmp_path, capsys):
    def add_chunk_and_slow_down(bench):  # a new hyperparameter at its default, the entry 20% slower with it
        bench["extra_info"]["hparams"] = {"window": 32, "chunk": 16}
        if bench["extra_info"]["impl"] == "lin_b":
            bench["stats"]["data"] = [t * 1.2 for t in bench["stats"]["data"]]

    status, out = _check_edited(tmp_path, capsys, add_chunk_and_slow_down)
    assert status == 1 and "compared 12 figures of 3 entries (12 cells)" in out, out
    assert "hyperparameters differ" not in out and _regressions(out).startswith("lin_b:")

    def widen_window(bench):
        bench["extra_info"]["hparams"] = {"window": 64, "chunk": 16}

    status, out = _check_edited(tmp_path / "changed", capsys, widen_window)
    assert status == 0 and "compared 0 figures of 0 entries" in out, out
    assert 'lin_a fwd N=256: hyperparameters differ ({"window": 32} -> {"chunk": 16, "window": 64})' in out


def _fake_suite(monkeypatch, runs):
    """Replace the real suite run: each call writes the next of `runs` (entries; None: fail, writing nothing).

    Records the cells each call asked for. Every run the check makes is gated on the baseline's
    reference time (2 ms here, up to noise).
    """
    calls = []

    def run_suite(out_dir, imports, select=None, node_ids=None, rounds=None, quiet_reference_ms=None, **_):
        assert quiet_reference_ms == pytest.approx(2.0, rel=0.02)
        calls.append(node_ids)
        entries = runs[len(calls) - 1]
        if entries is None:
            return pytest.ExitCode.TESTS_FAILED
        suite_file(out_dir, entries, seed=len(calls))
        return 0

    monkeypatch.setattr(baseline, "run_suite", run_suite)
    return calls


def test_a_flagged_entry_that_is_fast_again_when_re_measured_is_no_regression(tmp_path, capsys, monkeypatch):
    slow_once = {**HEALTHY, "lin_b": (1.0, 3.0, 1.0, 8 * 2**20, 1.2)}
    calls = _fake_suite(monkeypatch, [slow_once, HEALTHY])
    status = check.main(["--baseline", str(make_baseline(tmp_path)), "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert status == 0, out
    assert calls[0] is None  # the whole suite, then only the flagged entry's cells
    assert calls[1] == [f"benchmarks/test_regression.py::test_attention[lin_b-fwd-N{n}]" for n in SEQ_LENS]
    assert "flagged in the first run but not again when re-measured (1)" in out
    assert "no regression" in out


def test_a_regression_that_repeats_when_re_measured_is_reported(tmp_path, capsys, monkeypatch):
    slow = {**HEALTHY, "lin_b": (1.0, 3.0, 1.0, 8 * 2**20, 1.2)}
    calls = _fake_suite(monkeypatch, [slow, slow])
    status = check.main(["--baseline", str(make_baseline(tmp_path)), "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert status == 1 and len(calls) == 2
    regressions = _regressions(out)
    assert regressions.startswith("lin_b:") and "re-run 1" in regressions
    assert "not again" not in out


def test_a_re_run_that_fails_is_a_failed_suite(tmp_path, capsys, monkeypatch):
    slow = {**HEALTHY, "lin_b": (1.0, 3.0, 1.0, 8 * 2**20, 1.2)}
    _fake_suite(monkeypatch, [slow, None])
    status = check.main(["--baseline", str(make_baseline(tmp_path)), "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert status == 1
    assert "REGRESSION: the suite itself failed (pytest exit 1)" in out
    assert _regressions(out.split("REGRESSION: the suite")[1]).startswith("lin_b:")


def test_a_saved_run_is_read_with_its_re_runs(tmp_path, capsys, monkeypatch):
    """Re-reading what a live check saved (its confirm-1/ included) gives the live check's verdict."""
    slow_once = {**HEALTHY, "lin_b": (1.0, 3.0, 1.0, 8 * 2**20, 1.2)}
    _fake_suite(monkeypatch, [slow_once, HEALTHY])
    base, run = str(make_baseline(tmp_path)), tmp_path / "run"
    live = check.main(["--baseline", base, "--out", str(run)])
    live_out = capsys.readouterr().out
    saved = check.main(["--baseline", base, str(run)])
    saved_out = capsys.readouterr().out
    assert live == saved == 0, saved_out
    for out in (live_out, saved_out):
        assert "flagged in the first run but not again when re-measured (1)" in out and "no regression" in out


def test_cells_left_out_by_k_are_one_line(tmp_path, capsys, monkeypatch):
    _fake_suite(monkeypatch, [{"lin_a": HEALTHY["lin_a"]}])
    status = check.main(["--baseline", str(make_baseline(tmp_path)), "--out", str(tmp_path / "run"), "-k", "lin_a"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "could not compare 1:\n  8 cells outside -k 'lin_a', not measured" in out


OTHER_CPU = {**HOST, "cpu": {**HOST["cpu"], "brand_raw": "Intel(R) Xeon(R) Processor", "model": 143}}


def test_a_live_run_against_a_baseline_from_another_cpu_is_not_compared(tmp_path, capsys, monkeypatch):
    calls = _fake_suite(monkeypatch, [HEALTHY])
    folder = tmp_path / "base"
    suite_file(folder, HEALTHY, seed=100, host=OTHER_CPU)
    status = check.main(["--baseline", str(folder), "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert status == 0 and calls == [], out  # nothing measured
    line = out.splitlines()[-1]
    assert line.startswith("baseline from Intel(R) Xeon(R) Processor (")
    assert f"this host is {HOST['cpu']['brand_raw']} (" in line and ": not comparable (" in line
    assert "the same-host A/B (--base) is the gate" in line


def test_a_saved_run_from_another_cpu_is_compared_with_a_warning(tmp_path, capsys):
    fresh = suite_file(tmp_path / "fresh", HEALTHY, seed=1, host=OTHER_CPU)
    status = check.main(["--baseline", str(make_baseline(tmp_path)), str(fresh)])
    out = capsys.readouterr().out
    assert status == 0, out
    warning = next(line for line in out.splitlines() if line.startswith("warning: this run is from"))
    assert "Intel(R) Xeon(R) Processor" in warning and f"the baseline from {HOST['cpu']['brand_raw']}" in warning
    assert "no regression" in out


def test_a_dirty_baseline_is_read_with_a_note(tmp_path, capsys):
    base = make_baseline(tmp_path)
    for path in base.glob("benchmark*.json"):
        saved = json.loads(path.read_text())
        saved["commit_info"]["dirty"] = True
        path.write_text(json.dumps(saved))
    fresh = suite_file(tmp_path / "fresh", HEALTHY, seed=1)
    status = check.main(["--baseline", str(base), str(fresh)])
    out = capsys.readouterr().out
    assert status == 0
    assert sum("uncommitted changes" in line for line in out.splitlines()) == 1


def test_nothing_flagged_is_not_re_measured(tmp_path, capsys, monkeypatch):
    calls = _fake_suite(monkeypatch, [HEALTHY])
    status = check.main(["--baseline", str(make_baseline(tmp_path)), "--out", str(tmp_path / "run")])
    assert status == 0 and calls == [None], capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baseline", "nowhere"], "nowhere holds no benchmark.json"),
        (["--baseline", "{base}", "--time-tolerance", "0"], "--time-tolerance=0.0 is invalid: it must be positive"),
        (["--baseline", "{base}", "--confirm", "-1"], "--confirm=-1 is invalid: it must be 0 or more"),
        (["--refresh-baseline", "{base}", "{base}"], "--refresh-baseline runs the suite itself: drop RESULTS_DIR"),
        (["{base}"], "give --base [REF] (the same-host A/B), --baseline DIR, or --refresh-baseline DIR"),
        (["--base", "no-such-ref"], "--base 'no-such-ref' names no commit of this repository"),
        (["--base", "HEAD", "{base}"], "--base measures both sides itself: drop RESULTS_DIR"),
        (["--base", "--baseline", "{base}"], "BASE_COMMIT is missing: give the base commit (--base REF)"),
        (["--baseline", "{base}", "{old}"], "refresh the baseline (--refresh-baseline)"),
        (["--baseline", "{mixed}"], "mixes runs of different suite methods"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, args, message):
    base = make_baseline(tmp_path)
    old = suite_file(tmp_path / "old", HEALTHY, seed=0, method="wall time")
    mixed = suite_file(make_baseline(tmp_path / "mixed"), HEALTHY, seed=0, name="benchmark-4.json", method="wall time")
    with pytest.raises(SystemExit) as exit_info:
        check.main([a.format(base=base, old=old, mixed=mixed) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def _run_check(*args):
    return subprocess.run([sys.executable, "-m", "bench.check", *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.timing
def test_real_suite_catches_injected_regressions_against_the_base_commit(tmp_path):
    """The A/B against HEAD: unchanged, it passes; with tests/bench_regressions.py injected, each entry is named.

    All at the default tolerances and confirmation, on four entries' forward cells, 2 runs per side
    (about 2 minutes on 2 cores).
    """
    select = [
        "--runs",
        "2",
        "-k",
        "fwd and (linformer or full or sliding_window or performer) and not peer and not flex",
    ]
    clean = _run_check("--base", "HEAD", "--out", str(tmp_path / "clean"), *select)
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
    assert "compared 16 figures of 4 entries (16 cells)" in clean.stdout
    assert "no regression against " in clean.stdout

    bad = _run_check(
        "--base", "HEAD", "--out", str(tmp_path / "bad"), "--zoo-import", "tests.bench_regressions", *select
    )
    assert bad.returncode == 1, bad.stdout[-3000:]
    regressions = _regressions(bad.stdout)
    assert regressions.startswith("full, linformer, sliding_window (against "), bad.stdout[-3000:]
    checks = ("time / ref", "peak bytes", "time exponent", "memory exponent")
    rows = regressions.splitlines()[2:]  # after the names and the table's header
    found = {(row.split()[0], name) for row in rows for name in checks if name in row}
    assert ("linformer", "time / ref") in found
    assert ("full", "peak bytes") in found
    assert ("sliding_window", "time exponent") in found and ("sliding_window", "memory exponent") in found
    assert all(row.split()[0] != "performer" for row in rows)
