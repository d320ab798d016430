"""The same-host A/B (`python -m bench.check --base`): the base commit's attention_zoo against the working tree's.

The suite itself is replaced by made-up suite files here (each call writes the next side's run), so
these tests show what is run, in which order, and what is reported; tests/test_bench_check.py runs
the real thing end to end.
"""

import subprocess

import pytest
from suite_files import HEALTHY, HOST, SEQ_LENS, make_baseline, suite_file

from bench.check import ab, same_host
from bench.check import cli as check
from bench.check.checkout import REPO

SLOW_LIN_B = {**HEALTHY, "lin_b": (1.0, 3.0, 1.0, 8 * 2**20, 1.2)}


def _fake_sides(monkeypatch, base_runs, tree_runs):
    """Replace the suite: a base-side call writes the next of base_runs, a tree-side call the next of tree_runs.

    Returns the calls as (side, node_ids, imports, quiet_reference_ms), in the order they were made.
    """
    calls = []

    def run_suite(out_dir, imports, select=None, node_ids=None, rounds=None, quiet_reference_ms=None, name="",
                  zoo_dir=None, peaks=True, quiet_wait_s=None):  # fmt: skip
        side = out_dir.name
        assert (zoo_dir is not None) == (side == "base")  # only the base side gets the base commit's zoo
        calls.append((side, node_ids, imports, quiet_reference_ms))
        entries = (base_runs if side == "base" else tree_runs)[sum(c[0] == side for c in calls) - 1]
        zoo_path = (zoo_dir if zoo_dir else REPO) / "attention_zoo"
        suite_file(out_dir, entries, seed=len(calls), name=name, host={**HOST, "zoo_path": str(zoo_path)})
        return 0

    monkeypatch.setattr(same_host, "run_suite", run_suite)
    return calls


def _ab(tmp_path, capsys, *extra):
    status = check.main(["--base", "HEAD", "--out", str(tmp_path / "run"), "--runs", "2", *extra])
    return status, capsys.readouterr().out


def test_the_sides_take_turns_and_noise_is_no_regression(tmp_path, capsys, monkeypatch):
    calls = _fake_sides(monkeypatch, [HEALTHY] * 2, [HEALTHY] * 2)
    status, out = _ab(tmp_path, capsys, "--zoo-import", "my_module")
    assert status == 0, out
    assert [side for side, *_ in calls] == ["base", "tree", "base", "tree"]
    assert [imports for _, _, imports, _ in calls] == [[], ["my_module"], [], ["my_module"]]  # the tree side only
    # the first process runs ungated; the others wait for this host's quiet (its reference, 2 ms here)
    assert calls[0][3] is None and all(ms == pytest.approx(2.0, rel=0.05) for *_, ms in calls[1:])
    assert "compared 12 figures of 3 entries (12 cells)" in out
    assert f"no regression against {subprocess.check_output(['git', 'rev-parse', 'HEAD'], text=True)[:10]}" in out


def test_a_regression_is_confirmed_by_re_measuring_both_sides(tmp_path, capsys, monkeypatch):
    calls = _fake_sides(monkeypatch, [HEALTHY] * 4, [SLOW_LIN_B] * 4)
    status, out = _ab(tmp_path, capsys)
    assert status == 1, out
    rerun = calls[4:]
    assert [side for side, *_ in rerun] == ["base", "tree", "base", "tree"]
    expected = [f"benchmarks/test_regression.py::test_attention[lin_b-fwd-N{n}]" for n in SEQ_LENS]
    assert all(node_ids == expected for _, node_ids, *_ in rerun)
    regressions = out.split("REGRESSION in ")[1]
    assert regressions.startswith("lin_b (against ") and "re-run 1" in regressions


def test_a_flag_the_re_measurement_does_not_repeat_is_dismissed(tmp_path, capsys, monkeypatch):
    _fake_sides(monkeypatch, [HEALTHY] * 4, [SLOW_LIN_B, SLOW_LIN_B, HEALTHY, HEALTHY])
    status, out = _ab(tmp_path, capsys)
    assert status == 0, out
    assert "flagged in the first run but not again when re-measured (1)" in out


def test_entries_on_one_side_only_are_listed_not_failed(tmp_path, capsys, monkeypatch):
    base = {"lin_a": HEALTHY["lin_a"], "quad": HEALTHY["quad"], "removed": HEALTHY["lin_b"]}
    tree = {"lin_a": HEALTHY["lin_a"], "quad": HEALTHY["quad"], "new_family": HEALTHY["lin_b"]}
    _fake_sides(monkeypatch, [base] * 2, [tree] * 2)
    status, out = _ab(tmp_path, capsys)
    assert status == 0, out
    assert "new_family: only in the working tree (4 cells)" in out
    assert "removed: only at the base commit (4 cells)" in out


def test_the_baseline_from_this_host_is_compared_too(tmp_path, capsys, monkeypatch):
    _fake_sides(monkeypatch, [HEALTHY] * 2, [HEALTHY] * 2)
    status, out = _ab(tmp_path, capsys, "--baseline", str(make_baseline(tmp_path)))
    assert status == 0, out
    history = out.split("history: ")[1]
    assert "compared 12 figures" in history and "no regression against the baseline" in history


def test_a_baseline_from_another_cpu_is_one_line_and_no_failure(tmp_path, capsys, monkeypatch):
    _fake_sides(monkeypatch, [HEALTHY] * 2, [HEALTHY] * 2)
    folder = tmp_path / "amd"
    other = {**HOST, "cpu": {**HOST["cpu"], "brand_raw": "AMD EPYC 9R14"}}
    suite_file(folder, {**HEALTHY, "lin_a": (2.0, 1.0, 2.0, 4 * 2**20, 1.0)}, seed=3, host=other)  # would fail
    status, out = _ab(tmp_path, capsys, "--baseline", str(folder))
    assert status == 0, out
    history = out.split("history: ")[1].splitlines()
    assert len(history) == 2
    line = history[1]
    assert line.startswith("baseline from AMD EPYC 9R14 (") and ": not comparable (CPU brand_raw" in line
    assert line.endswith("is the gate") and "the A/B against " in line


def test_the_base_zoo_is_attention_zoo_at_the_commit(tmp_path):
    commit = same_host.resolve_commit("HEAD")
    tracked = subprocess.check_output(["git", "ls-tree", "-r", "--name-only", commit, "attention_zoo"], cwd=REPO)
    with same_host.base_zoo(commit) as folder:
        exported = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        assert exported == sorted(tracked.decode().split())
        first = exported[0]
        assert (folder / first).read_bytes() == subprocess.check_output(["git", "show", f"{commit}:{first}"], cwd=REPO)
    assert not folder.exists()


def test_the_recorded_base_commit_resolves():
    recorded = same_host.recorded_base(ab.DEFAULT_BASELINE)
    assert same_host.resolve_commit(recorded) == recorded
