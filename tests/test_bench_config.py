"""The bench config: every option in conf/ composes into cells; bad input fails in one line before running."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attention_zoo import Problem
from bench.__main__ import main
from bench.sweep.accuracy import sampled_rows
from bench.sweep.cases import expand
from bench.sweep.config import CONF_DIR, compose_config
from bench.sweep.precheck import job_overrides

GROUP_OPTIONS = sorted(f"{path.parent.name}={path.stem}" for path in CONF_DIR.glob("*/*.yaml"))


@pytest.mark.parametrize("option", GROUP_OPTIONS)
def test_every_config_option_composes_into_cells(option):
    cells = expand(compose_config([option]))
    assert cells
    assert len({cell.cell_id for cell in cells}) == len(cells)  # cell ids tell every cell apart


def test_a_swept_hyperparameter_gives_one_cell_per_value():
    cfg = compose_config(["sweep=approx_accuracy", "impls.patterns=[performer]"])
    values = sorted(cell.hparams["num_features"] for cell in expand(cfg) if not cell.problem.causal)
    assert values == [16, 32, 64, 128, 256]


def test_every_entry_of_approx_accuracy_is_measured_somewhere():
    import attention_zoo

    cells = expand(compose_config(["sweep=approx_accuracy"]))
    runnable = {c.impl for c in cells if attention_zoo.get(c.impl).unsupported_reason(c.problem) is None}
    assert runnable == {c.impl for c in cells}  # transformer_xl is causal only, linformer and bigbird not causal


def test_multirun_overrides_expand_to_one_override_list_per_job():
    jobs = job_overrides(["sweep.head_dims=[64],[128]", "timing=quick,precise", "seed=1"])
    assert len(jobs) == 4
    assert ["sweep.head_dims=[64]", "timing=precise", "seed=1"] in jobs


BAD_ARGS = {
    "key typo": ["sweep.seq_lenz=[1024]"],
    "value type": ["sweep.seq_lens=abc"],
    "schema type": ["timing.min_samples=many"],
    "unknown impl": ["impls.patterns=[sdpa_flsh]"],
    "glob matching nothing": ["impls.patterns=[nothing_*]"],
    "unknown hyperparameter": ["impls.patterns=[blockwise]", "impls.hparams.blockwise.q_tyle=[64]"],
    "heads not divisible": ["sweep.heads=6", "sweep.kv_heads=4"],
    "empty axis": ["sweep.seq_lens=[]"],
    "unknown mode": ["sweep.modes=[fwd,backward]"],
    "unknown dtype": ["sweep.dtypes=float8"],
    "unknown device": ["sweep.devices=tpu"],
    "unknown preset": ["sweep=quik"],
    "bad job of a multirun": ["-m", "sweep.head_dims=[64],[-1]"],
    "resume of a non-run": ["resume=/nonexistent/run"],
}


@pytest.mark.parametrize("args", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_bad_input_exits_2_with_one_line_before_running(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and err.count("\n") == 1, err


def test_cli_typo_prints_one_line_and_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench", "sweep.seq_lenz=[1024]", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["bench: error: unknown config key 'sweep.seq_lenz' (did you mean "
                                                "sweep.seq_lens?); sweep has: seq_lens, batch, heads, kv_heads, "
                                                "head_dims, causal, padding, lengths, documents, inputs, "
                                                "decode_tokens, "
                                                "kv_pairs, dtypes, devices, modes, max_cell_flops, "
                                                "max_cells"]  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_sampled_rows_of_the_allowed_mask_match_the_full_mask():
    problem = Problem(batch=2, q_heads=2, q_len=300, kv_len=333, causal=True, kv_valid_lens=(333, 200))
    rows = sampled_rows(problem.q_len)
    assert len(rows) == 256 and rows[0] == 0 and rows[-1] == problem.q_len - 1
    assert torch.equal(problem.allowed_mask(rows), problem.allowed_mask()[:, :, rows])
