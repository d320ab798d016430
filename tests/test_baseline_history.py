"""The committed baseline as history: refreshed only from a clean tree (recording its commit), compared only
with runs from a host like its own."""

import json

import pytest
from suite_files import HEALTHY, HOST, suite_file

from bench.check import baseline
from bench.check import cli as check
from bench.check import runs as suite_runs
from bench.check.same_host import BASE_COMMIT_FILE


def test_the_same_host_is_comparable():
    assert suite_runs.host_difference(HOST, dict(HOST)) is None
    reordered = {**HOST, "cpu": {**HOST["cpu"], "flags": sorted(HOST["cpu"].get("flags", []), reverse=True)}}
    assert suite_runs.host_difference(HOST, reordered) is None


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"cpu": {**HOST["cpu"], "model": -1}}, f"CPU model {HOST['cpu'].get('model')!r} vs -1"),
        ({"cpu": {**HOST["cpu"], "flags": [*HOST["cpu"].get("flags", []), "zoo_flag"]}}, "CPU flags +zoo_flag"),
        ({"cpu": {**HOST["cpu"], "flags": HOST["cpu"].get("flags", [])[1:]}}, "CPU flags -"),
        ({"torch_version": "2.12.0+cpu"}, "torch_version"),
        ({"torch_threads": 2}, "torch_threads 1 vs 2"),
        ({"gpu_name": "NVIDIA H200"}, "gpu_name '' vs 'NVIDIA H200'"),
    ],
)
def test_what_differs_is_said(change, said):
    assert said in suite_runs.host_difference(HOST, {**HOST, **change})


def _fake_git(monkeypatch, status_lines):
    def git(*args):
        return "\n".join(status_lines) if args[0] == "status" else "f" * 40

    monkeypatch.setattr(baseline, "git", git)


def test_a_refresh_from_a_dirty_tree_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    _fake_git(monkeypatch, [" M attention_zoo/impls/full.py"])
    with pytest.raises(SystemExit) as exit_info:
        check.main(["--refresh-baseline", str(tmp_path / "base")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a clean tree" in err and "attention_zoo/impls/full.py" in err
    assert not (tmp_path / "base").exists()


def test_a_refresh_records_its_commit_and_replaces_the_runs_at_the_end(tmp_path, capsys, monkeypatch):
    _fake_git(monkeypatch, [])
    folder = tmp_path / "base"
    suite_file(folder, HEALTHY, seed=0, name="benchmark-7.json")  # a stale run of an older baseline
    written = []

    def run_suite(out_dir, imports, select=None, rounds=None, name="", **_):
        assert out_dir != folder  # measured elsewhere: the tree stays as it was while the runs are made
        written.append(name)
        suite_file(out_dir, HEALTHY, seed=len(written), name=name)
        return 0

    monkeypatch.setattr(baseline, "run_suite", run_suite)
    assert check.main(["--refresh-baseline", str(folder), "--runs", "2"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [BASE_COMMIT_FILE, "benchmark-2.json", "benchmark.json"]
    assert (folder / BASE_COMMIT_FILE).read_text() == "f" * 40 + "\n"
    assert json.loads((folder / "benchmark.json").read_text())["commit_info"]["dirty"] is False
