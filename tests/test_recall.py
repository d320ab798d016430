"""The recall task: the MQAR generator matches Zoology's definition, a short training run's loss falls, and
recall cells give rows (or one-line errors) like every other mode."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import rows as results
from bench.report.render import write_report
from bench.sweep.cases import expand
from bench.sweep.config import compose_config
from bench.sweep.run import run
from bench.tasks.mqar import IGNORE_INDEX, check_task, gap_probabilities, multiquery_ar
from bench.tasks.train import train_recall

REPO = Path(__file__).parent.parent


def test_mqar_matches_zoologys_definition() -> None:
    vocab, n, pairs = 64, 48, 6
    inputs, labels = multiquery_ar(500, n, pairs, vocab, power_a=0.01, seed=3)
    assert inputs.shape == labels.shape == (500, n) and inputs.dtype == labels.dtype == torch.int64
    context = 2 * pairs
    keys, values = inputs[:, 0:context:2], inputs[:, 1:context:2]
    assert ((keys >= 1) & (keys < vocab // 2)).all() and ((values >= vocab // 2) & (values < vocab)).all()
    for example in range(500):
        assert len(set(keys[example].tolist())) == pairs and len(set(values[example].tolist())) == pairs
        answer = dict(zip(keys[example].tolist(), values[example].tolist(), strict=True))
        rest, asked = inputs[example, context:], labels[example, context:]
        queried = rest.nonzero().flatten()
        # every key is asked exactly once again, at an even offset after the pairs; the rest is zeros
        assert sorted(rest[queried].tolist()) == sorted(answer) and (queried % 2 == 0).all()
        # the label at a query is its key's value; nothing else is scored
        assert asked[queried].tolist() == [answer[k] for k in rest[queried].tolist()]
        assert (asked[rest == 0] == IGNORE_INDEX).all() and (labels[example, :context] == IGNORE_INDEX).all()
    # the power law: queries come soon after the pairs far more often than late
    gaps = (inputs[:, context:] != 0).nonzero()[:, 1] // 2
    space = (n - context) // 2
    assert (gaps < space // 4).float().mean() > 1.5 * (space // 4) / space  # uniform gaps: 1x
    assert gap_probabilities(space, 0.01)[0] > gap_probabilities(space, 0.01)[-1] * 10
    assert gap_probabilities(space, 1.0).allclose(torch.full((space,), 1 / space, dtype=torch.float64))
    # seeded
    again, _ = multiquery_ar(500, n, pairs, vocab, power_a=0.01, seed=3)
    other, _ = multiquery_ar(500, n, pairs, vocab, power_a=0.01, seed=4)
    assert torch.equal(inputs, again) and not torch.equal(inputs, other)


@pytest.mark.parametrize(
    ("vocab", "n", "pairs", "expected"),
    [
        (64, 33, 4, "MQAR needs an even sequence length, not 33"),
        (64, 32, 9, "MQAR with N=32 takes 1..8 key-value pairs (4 * pairs <= N), not 9"),
        (64, 32, 0, "takes 1..8 key-value pairs"),
        (8, 64, 4, "MQAR with vocab_size=8 has 3 keys, fewer than 4 pairs"),
    ],
)
def test_impossible_tasks_are_one_line_each(vocab: int, n: int, pairs: int, expected: str) -> None:
    assert expected in check_task(vocab, n, pairs)
    with pytest.raises(ValueError, match="MQAR"):
        multiquery_ar(2, n, pairs, vocab, 0.01, 0)


SMOKE = {"task": "mqar", "kv_pairs": 2, "steps": 120, "learning_rate": 1e-2, "weight_decay": 0.1, "vocab_size": 32,
         "power_a": 0.01, "test_examples": 64, "layers": 2}  # fmt: skip


def test_a_hundred_steps_of_training_lower_the_loss_by_two_fifths_and_recall_beats_guessing() -> None:
    import attention_zoo as z

    problem = z.Problem(batch=16, q_heads=2, q_len=32, head_dim=16, causal=True)
    result = train_recall("full", {}, problem, SMOKE, seed=0)
    # from about ln(32) (uniform over the vocabulary) to below ln(16) (uniform over the values) and on
    assert result["loss_final"] < 0.6 * result["loss_first"]
    # a uniform guess among the 16 values is right 1 time in 16
    assert 0.25 < result["accuracy"] <= 1 and result["test_examples"] == 64 and result["train_s"] > 0
    assert train_recall("full", {}, problem, SMOKE, seed=0)["loss_final"] == pytest.approx(result["loss_final"])


RECALL = ["timing=smoke", "progress=false", "report=false", "sweep.modes=recall", "sweep.causal=true",
          "sweep.seq_lens=[32]", "sweep.heads=2", "sweep.head_dims=16", "sweep.batch=16", "sweep.kv_pairs=[2,4]",
          "recall.steps=5", "recall.vocab_size=32", "recall.test_examples=16"]  # fmt: skip


def test_recall_cells_give_a_row_per_entry_and_task_with_time_and_accuracy(tmp_path) -> None:
    cfg = compose_config([*RECALL, "impls.patterns=[full,linformer,flex_sliding_window]"])
    cells = expand(cfg)
    assert len(cells) == 6 and {c.task["kv_pairs"] for c in cells} == {2, 4}
    assert len({c.cell_id for c in cells}) == 6
    run(cfg, tmp_path, run_id="recall")
    rows = results.load(tmp_path).set_index(["impl", "kv_pairs"])
    full = rows.loc["full"]
    assert (full["status"] == "ok").all() and (full["task"] == "mqar").all() and (full["steps"] == 5).all()
    assert full["accuracy"].between(0, 1).all() and (full["time_ms_median"] > 0).all() and (full["flops"] > 0).all()
    assert (full["loss_final"] > 0).all() and (full["peak_bytes"] >= 0).all()
    assert (rows.loc["linformer", "status"] == "unsupported").all()  # not causal: no language model
    assert rows.loc["linformer", "reason"].str.contains("causal").all()
    assert (rows.loc["flex_sliding_window", "status"] == "unsupported").all()  # no backward on CPU
    report = (write_report([tmp_path]).parent / "report.md").read_text()
    assert "## Recall: MQAR accuracy against speed" in report and "![recall](recall.png)" in report
    assert "N=32, 2 key-value pairs: exact full" in report and (tmp_path / "recall.png").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sweep.kv_pairs=[20]"], "sweep.kv_pairs=20 with sweep.seq_lens=32: MQAR with N=32 takes 1..8 key-value"),
        (["sweep.causal=false"], "sweep.modes has recall, which trains a causal language model: set sweep.causal=true"),
        (["sweep.padding=0.5"], "sweep.padding, sweep.lengths and sweep.documents apply to fwd/bwd only"),
        (["recall.steps=0"], "recall.steps=0 is invalid"),
        (["recall.power_a=2.0"], "recall.power_a=2.0 is invalid"),
        (["recall.vocab_size=8"], "MQAR with vocab_size=8 has 3 keys, fewer than 4 pairs"),
        (["sweep.kv_pairs=[two]"], "sweep.kv_pairs value 'two' is invalid"),
    ],
)
def test_a_bad_recall_setting_is_one_line_and_exit_2(tmp_path, overrides: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", *RECALL, "impls.patterns=[full]", *overrides, f"hydra.run.dir={tmp_path}/r"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "r" / "rows.csv").exists()
