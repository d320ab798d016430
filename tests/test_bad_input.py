"""Every input a user can get wrong, across the three command lines and the library: one line, exit 2.

Each case asserts: exit code 2 (or the library's one-line error type), exactly one line on stderr,
no traceback, and the bad value named in it. The command lines run in-process through their
main(argv); the unwritable-folder cases run as a child without CAP_DAC_OVERRIDE (tests run as root,
and chmod does not stop root).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import attention_zoo as z
from attention_zoo.rules import RuleError
from bench import rows as results
from bench.__main__ import main as bench_main
from bench.check import cli as check
from bench.core.locks import claim_folder
from bench.errors import UserError
from bench.report import cli as report_cli
from bench.sweep.cases import expand
from bench.sweep.config import compose_config
from bench.sweep.run import run

REPO = Path(__file__).parent.parent
TINY = ["timing=smoke", "sweep.seq_lens=[16]", "sweep.heads=2", "sweep.head_dims=16", "progress=false",
        "report=false", "timing_lock=null"]  # fmt: skip
WITHOUT_ROOT_OVERRIDES = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
HUNDRED = f"[{','.join(map(str, range(1, 101)))}]"
MILLION_CELLS = [
    f"sweep.seq_lens={HUNDRED}",
    f"sweep.batch={HUNDRED}",
    f"sweep.heads={HUNDRED}",
    "impls.patterns=[full]",
]

# (command line, arguments, what the one line must name); {run} etc. are folders prepared below
BENCH = {
    "key typo": (["sweep.seq_lenz=[1024]"], "did you mean sweep.seq_lens?"),
    "unknown key, close match": (["sweep.seqlens=[256]"], "'sweep.seqlens' (did you mean sweep.seq_lens?)"),
    "unknown top-level key": (["thread=2"], "'thread' (did you mean threads?)"),
    "axis value type": (["sweep.seq_lens=abc"], "'abc'"),
    "schema type": (["timing.min_samples=many"], "many"),
    "schema bool": (["impls.exact=maybe"], "maybe"),
    "unknown impl": (["impls.patterns=[sdpa_flsh]"], "'sdpa_flsh' (did you mean sdpa_flash"),
    "glob matching nothing": (["impls.patterns=[nothing_*]"], "'nothing_*'"),
    "unknown hyperparameter block": (["impls.hparams.blokwise.q_tile=8"], "'blokwise'"),
    "unknown hyperparameter": (["impls.patterns=[blockwise]", "impls.hparams.blockwise.q_tyle=[64]"], "'q_tyle'"),
    "window 0": (["impls.hparams.sliding_window.window=0"], "sliding_window window=0 is invalid"),
    "proj_len -1": (["impls.hparams.linformer.proj_len=-1"], "linformer proj_len=-1 is invalid"),
    "num_features abc": (["impls.hparams.performer.num_features=abc"], "performer num_features='abc'"),
    "max_len below kv_len": (["sweep.seq_lens=[256]", "impls.hparams.linformer.max_len=100"], "max_len=100"),
    "tile not allowed": (["impls.hparams.triton_flash.block_m=24"], "block_m=24"),
    "flag not a bool": (["impls.hparams.linformer.share_kv=maybe"], "share_kv='maybe'"),
    "swept bad value": (["impls.hparams.performer.num_features=[16,0]"], "num_features=0"),
    "empty hyperparameter list": (["impls.hparams.performer.num_features=[]"], "num_features=[]"),
    "heads not divisible": (["sweep.heads=6", "sweep.kv_heads=4"], "kv_heads=4"),
    "kv_heads 0": (["sweep.kv_heads=0"], "kv_heads=0"),
    "empty axis": (["sweep.seq_lens=[]"], "sweep.seq_lens=[]"),
    "unknown mode": (["sweep.modes=[fwd,backward]"], "'backward'"),
    "unknown dtype": (["sweep.dtypes=float8"], "'float8'"),
    "unknown device": (["sweep.devices=tpu"], "tpu"),
    "padding out of range": (["sweep.padding=1.5"], "1.5"),
    "causal not a bool": (["sweep.causal=sometimes"], "'sometimes'"),
    "decode not causal": (["sweep.modes=decode"], "decode, which is causal generation: set sweep.causal=true"),
    "decode tokens 0": (["sweep.modes=decode", "sweep.causal=true", "sweep.decode_tokens=0"], "decode_tokens value 0"),
    "decode with padding": (["sweep.modes=decode", "sweep.causal=true", "sweep.padding=0.5"], "caches are whole"),
    "unknown lengths": (["sweep.lengths=zipf"], "sweep.lengths='zipf' is unknown"),
    "lengths and padding": (["sweep.lengths=uniform", "sweep.padding=0.5"], "give one of them"),
    "documents 0": (["sweep.documents=0"], "sweep.documents value 0 is invalid: it must be in 1..N"),
    "documents and padding": (["sweep.documents=3", "sweep.padding=0.5"], "packed documents fill their rows"),
    "documents in decode": (["sweep.modes=decode", "sweep.causal=true", "sweep.documents=2"], "sweep.documents apply"),
    "unknown inputs": (["sweep.inputs=[iid,needle]"], "sweep.inputs value 'needle' is unknown: allowed are iid, local"),
    "inputs not a name": (["sweep.inputs=3"], "sweep.inputs value 3 is invalid"),
    "unknown preset": (["sweep=quik"], "quik"),
    "bad job of a multirun": (["-m", "sweep.head_dims=[64],[-1]"], "-1"),
    "comma list without -m": (["sweep.modes=fwd,bwd"], "sweep.modes=fwd,bwd sweeps several values: add -m"),
    "unclosed list": (["sweep.seq_lens=[256"], "'sweep.seq_lens=[256'"),
    "threads -1": (["threads=-1"], "threads=-1 is invalid"),
    "threads 0": (["threads=0"], "threads=0 is invalid"),
    "memory limit -1": (["memory_limit_bytes=-1"], "memory_limit_bytes=-1 is invalid"),
    "cell timeout 0": (["timing.cell_timeout_s=0"], "timing.cell_timeout_s=0.0 is invalid"),
    "no samples": (["timing.min_samples=0", "timing.max_samples=0"], "timing.min_samples=0 is invalid"),
    "min over max samples": (["timing.min_samples=9", "timing.max_samples=5"], "min_samples=9 is invalid"),
    "budget -1": (["timing.budget_s=-1"], "timing.budget_s=-1.0 is invalid"),
    "warmup calls -1": (["timing.warmup_calls=-1"], "timing.warmup_calls=-1 is invalid"),
    "unknown timing heap": (["timing.heap=cached"], "timing.heap='cached' is invalid: it must be one of resident"),
    "max cell flops 0": (["sweep.max_cell_flops=0"], "sweep.max_cell_flops=0.0 is invalid"),
    "max cells 0": (["sweep.max_cells=0"], "sweep.max_cells=0 is invalid"),
    "a million cells": (MILLION_CELLS, "1,000,000 cells, more than sweep.max_cells=10,000"),
    "missing plugin module": (["imports=[no_such_module]"], "'no_such_module'"),
    "run dir is a file": (["hydra.run.dir={file}"], "{file} is a file"),
    "run dir under a file": (["hydra.run.dir={file}/run"], "{file} is a file"),
    "sweep dir under a file": (["-m", "sweep.seq_lens=[16],[32]", "hydra.sweep.dir={file}/sweep"], "{file} is a file"),
    "folder being written": ([*TINY, "hydra.run.dir={busy}"], "{busy} is being written by another process"),
    "timing lock under a file": (
        [*TINY, "impls.patterns=[full]", "hydra.run.dir={tmp}/new_run", "timing_lock={file}/lock"],
        "timing_lock={file}/lock",
    ),
    "resume of a non-run": (["resume=/nonexistent/run"], "/nonexistent/run"),
    "resume with overrides": (["resume={run}", "seed=1"], "seed=1"),
    "resume without config": (["resume={no_config}"], "{no_config} is not a run folder: it holds no config.yaml"),
    "resume of an empty config": (["resume={empty_config}"], "{empty_config}/config.yaml is empty"),
    "resume of a config not YAML": (["resume={bad_yaml}"], "{bad_yaml}/config.yaml is damaged"),
    "resume of a config not the schema": (["resume={not_schema}"], "{not_schema}/config.yaml is not a bench config"),
    "resume of another run's config": (["resume={foreign}"], "{foreign}/config.yaml is not this run's config"),
    "resume of damaged rows": (["resume={damaged_rows}"], "{damaged_rows}/rows.csv is damaged: line(s) 3"),
    "resume of a damaged environment": (["resume={bad_env}"], "{bad_env}/environment.json is damaged"),
}
REPORT = {
    "report of a folder without rows": (["{empty_dir}"], "{empty_dir} holds no rows.csv"),
    "report of a missing folder": (["{tmp}/nowhere"], "{tmp}/nowhere"),
    "report with an unknown baseline": (["{run}", "--baseline", "ful"], "--baseline 'ful' is not in these results"),
    "report of damaged rows": (["{damaged_rows}"], "{damaged_rows}/rows.csv is damaged"),
    "report with an unknown option": (["{run}", "--colour", "blue"], "--colour"),
}
CHECK = {
    "check without a target": ([], "give --base [REF] (the same-host A/B), --baseline DIR, or --refresh-baseline DIR"),
    "check of a missing baseline": (["--baseline", "{tmp}/nowhere"], "nowhere"),
    "check tolerance not a number": (["--baseline", "{tmp}", "--time-tolerance", "abc"], "'abc'"),
    "check tolerance 0": (["--baseline", "{tmp}", "--memory-tolerance", "0"], "--memory-tolerance=0.0 is invalid"),
    "check alpha -1": (["--baseline", "{tmp}", "--alpha", "-1"], "--alpha=-1.0 is invalid"),
    "check confirm -1": (["--baseline", "{tmp}", "--confirm", "-1"], "--confirm=-1 is invalid"),
}
LIBRARY = {
    "get an unknown name": (lambda p: z.get("ful"), z.UnknownImplError, "'ful'"),
    "build with q_tile 0": (
        lambda p: z.get("blockwise").build(z.Problem(q_len=8), q_tile=0),
        z.HyperparameterError,
        "blockwise q_tile=0 is invalid: it must be an integer >= 1",
    ),
    "build with max_len below kv_len": (
        lambda p: z.get("linformer").build(z.Problem(q_len=64), max_len=16),
        z.HyperparameterError,
        "max_len=16 is invalid: it must be an integer >= kv_len (64)",
    ),
    "resolve a window not a number": (
        lambda p: z.get("sliding_window").resolve_hparams({"window": "wide"}),
        z.HyperparameterError,
        "window='wide'",
    ),
    "resolve a flag not a bool": (
        lambda p: z.get("performer").resolve_hparams({"redraw": 1}),
        z.HyperparameterError,
        "redraw=1",
    ),
    "problem of length 0": (lambda p: z.Problem(q_len=0), z.ProblemError, "q_len=0"),
    "load a folder without rows": (lambda p: results.load(p["empty_dir"]), UserError, "holds no rows.csv"),
    "read damaged rows": (
        lambda p: results.read_rows_csv(Path(p["damaged_rows"]) / "rows.csv"),
        UserError,
        "line(s) 3",
    ),
    "expand with threads -1": (lambda p: expand(compose_config(["threads=-1"])), RuleError, "threads=-1"),
}


RUN_FOLDERS = ("run", "no_config", "empty_config", "bad_yaml", "not_schema", "foreign", "damaged_rows", "bad_env")


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("saved")
    run(compose_config([*TINY, "impls.patterns=[full,sdpa_math]"]), run_dir, run_id="saved")
    return run_dir


def _copy(saved_run: Path, folder: Path, **files: str | None) -> str:
    """A copy of the saved run with some files replaced (None: removed)."""
    shutil.copytree(saved_run, folder)
    for name, text in files.items():
        path = folder / name.replace("_", ".", 1)
        path.unlink() if text is None else path.write_text(text)
    return str(folder)


@pytest.fixture
def places(tmp_path, saved_run):
    rows = (saved_run / "rows.csv").read_text().splitlines(keepends=True)
    config = (saved_run / "config.yaml").read_text()
    file = tmp_path / "file.txt"
    file.write_text("not a folder\n")
    (tmp_path / "empty_dir").mkdir()
    busy = tmp_path / "busy"
    busy.mkdir()
    claim = claim_folder(busy)
    yield {
        "tmp": str(tmp_path), "file": str(file), "empty_dir": str(tmp_path / "empty_dir"), "busy": str(busy),
        "run": _copy(saved_run, tmp_path / "run"),
        "no_config": _copy(saved_run, tmp_path / "no_config", config_yaml=None),
        "empty_config": _copy(saved_run, tmp_path / "empty_config", config_yaml=""),
        "bad_yaml": _copy(saved_run, tmp_path / "bad_yaml", config_yaml="sweep: [16, 32\nimpls: {"),
        "not_schema": _copy(saved_run, tmp_path / "not_schema", config_yaml=config + "colour: blue\n"),
        "foreign": _copy(saved_run, tmp_path / "foreign", config_yaml=config.replace("- 16", "- 64")),
        "damaged_rows": _copy(saved_run, tmp_path / "damaged_rows",
                              rows_csv=rows[0] + rows[1] + rows[1].rstrip("\n") + "," + rows[2]),
        "bad_env": _copy(saved_run, tmp_path / "bad_env", environment_json='{"run_id": "saved", '),
    }  # fmt: skip
    os.close(claim)


def _assert_one_line(err: str, prefix: str, needle: str) -> None:
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith(prefix), err
    assert needle in err, err


def _cli_cases():
    for name, (args, needle) in BENCH.items():
        yield pytest.param(bench_main, "bench: error: ", args, needle, id=f"bench: {name}")
    for name, (args, needle) in REPORT.items():
        yield pytest.param(report_cli.main, "python -m bench.report: error: ", args, needle, id=f"report: {name}")
    for name, (args, needle) in CHECK.items():
        yield pytest.param(check.main, "python -m bench.check: error: ", args, needle, id=f"check: {name}")


@pytest.mark.parametrize(("main", "prefix", "args", "needle"), list(_cli_cases()))
def test_a_bad_command_line_is_one_line_and_exit_2(main, prefix, args, needle, places, capsys):
    before = _run_folders(places)
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**places) for a in args])
    assert exit_info.value.code == 2
    _assert_one_line(capsys.readouterr().err, prefix, needle.format(**places))
    assert _run_folders(places) == before  # a refused resume changes nothing


def _run_folders(places: dict[str, str]) -> dict[Path, bytes]:
    """Every file of the prepared run folders, with its contents."""
    return {path: path.read_bytes() for name in RUN_FOLDERS for path in Path(places[name]).rglob("*")}


@pytest.mark.parametrize(("call", "error_type", "needle"), LIBRARY.values(), ids=LIBRARY.keys())
def test_a_bad_library_call_is_one_line_error(call, error_type, needle, places):
    with pytest.raises(error_type) as error:
        call(places)
    message = str(error.value)
    assert "\n" not in message and needle in message, message


def _without_root_overrides(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*WITHOUT_ROOT_OVERRIDES, sys.executable, "-m", "bench", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("case", ["results folder not writable", "resume of a read-only run"])
def test_an_unwritable_folder_is_one_line_and_exit_2(case, places):
    if case == "results folder not writable":
        folder = Path(places["tmp"]) / "read_only"
        folder.mkdir()
        args = [*TINY, f"hydra.run.dir={folder}/run"]
    else:
        folder = Path(places["run"])
        args = [f"resume={folder}"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    folder.chmod(0o555)
    try:
        done = _without_root_overrides(args)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 2, done.stderr
    _assert_one_line(done.stderr, "bench: error: ", f"{folder} is not writable")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
