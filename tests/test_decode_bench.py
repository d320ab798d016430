"""The bench's decode mode and ragged batches: cells, FLOP and byte counts, the chunked reference, one measured cell."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import attention_zoo as z
from bench.core.cell import Cell
from bench.sweep import cases
from bench.sweep.config import compose_config
from bench.sweep.decode import REFERENCE_KEYS, exact_decode
from bench.sweep.flops import cell_bytes, cell_flops, cell_flops_executed
from bench.sweep.lengths import LENGTHS, draw_documents, draw_lengths
from bench.sweep.measure import measure_cell

TIMING = {"warmup_calls": 1, "warmup_s": 0.0, "min_samples": 2, "max_samples": 2, "budget_s": 0.0, "heap": "resident"}
TILES = {"q_tile": 64, "k_tile": 128}


def test_decode_cells_are_steps_after_a_context_of_seq_len() -> None:
    cfg = compose_config(["sweep.modes=[fwd,decode]", "sweep.causal=true", "sweep.seq_lens=[64]",
                          "sweep.decode_tokens=[1,4]", "impls.patterns=[full]"])  # fmt: skip
    cells = cases.expand(cfg)
    decode = [c for c in cells if c.mode == "decode"]
    assert [c.mode for c in cells].count("fwd") == 1 and len(decode) == 2
    assert [(c.problem.q_len, c.problem.kv_len, c.seq_len) for c in decode] == [(1, 65, 64), (4, 68, 64)]


def test_a_decode_step_counts_the_rows_it_adds() -> None:
    problem = z.Problem(q_heads=4, kv_heads=2, q_len=4, kv_len=68, head_dim=16, causal=True)
    cell = Cell("full", problem, "decode", {}, 0.0)
    pairs = sum(64 + t + 1 for t in range(4))  # new query t sees the 64 context keys and new keys 0..t
    assert cell_flops(cell) == cell_flops_executed(cell) == 4 * 4 * 16 * pairs


@pytest.mark.parametrize("distribution", LENGTHS)
def test_lengths_are_seeded_and_within_the_batch(distribution: str) -> None:
    lengths = draw_lengths(distribution, 1000, 16, seed=3)
    assert lengths == draw_lengths(distribution, 1000, 16, seed=3) != draw_lengths(distribution, 1000, 16, seed=4)
    assert all(1 <= n <= 1000 for n in lengths) and len(set(lengths)) > 1


def test_ragged_rows_count_useful_work_on_the_real_lengths() -> None:
    problem = z.Problem(batch=3, q_heads=2, q_len=100, head_dim=16, causal=True, kv_valid_lens=(100, 30, 7))
    cell = Cell("full", problem, "fwd", {}, 0.0, "longtail")
    per_sequence = sum(2 * 16 * 4 * n * (n + 1) / 2 for n in (100, 30, 7))  # causal pairs of each alone
    assert cell_flops(cell) == pytest.approx(per_sequence)
    assert cell_flops_executed(cell) == 4 * 2 * 16 * 3 * 100 * 100  # full computes every padded pair
    useful, executed = cell_bytes(cell)
    assert useful == executed * 137 / 300


def test_packed_rows_count_useful_work_within_documents_and_blockwise_skips_the_rest() -> None:
    lens = draw_documents(4, 1024, seed=3)
    assert lens == draw_documents(4, 1024, seed=3) != draw_documents(4, 1024, seed=4)
    assert sum(lens) == 1024 and len(lens) == 4 and min(lens) >= 1
    problem = z.Problem(batch=2, q_heads=2, q_len=1024, head_dim=16, causal=True, doc_lens=lens)
    useful = 2 * 2 * 16 * 4 * sum(n * (n + 1) / 2 for n in lens)  # each document's causal pairs, alone
    full, tiled = Cell("full", problem, "fwd", {}, 0.0), Cell("blockwise", problem, "fwd", TILES, 0.0)
    assert cell_flops(full) == cell_flops(tiled) == pytest.approx(useful)
    assert cell_flops_executed(full) == 4 * 2 * 16 * 2 * 1024 * 1024
    unpacked = Cell("blockwise", dataclasses.replace(problem, doc_lens=None), "fwd", TILES, 0.0)
    assert useful <= cell_flops_executed(tiled) < cell_flops_executed(unpacked)  # tiles outside documents skipped


def test_the_chunked_reference_is_exact_attention() -> None:
    problem = z.Problem(q_heads=4, kv_heads=2, q_len=3, kv_len=REFERENCE_KEYS + 37, head_dim=8, causal=True)
    q, k, v = problem.make_inputs(seed=1)
    expected = z.dense_attention(q, k, v, problem.allowed_mask())
    assert torch.allclose(exact_decode(problem, q, k, v), expected, atol=1e-10)


def test_a_decode_cell_is_measured_with_bytes_and_error() -> None:
    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=1, kv_len=301, head_dim=16, causal=True)
    exact = measure_cell(Cell("sdpa_flash", problem, "decode", {}, 0.0), TIMING, 0)
    assert exact["status"] == "ok" and exact["error_rel_l2"] < 1e-5
    assert exact["state_bytes"] == 2 * 2 * 301 * 16 * 4  # k and v of every position, per sequence
    assert exact["bytes_read"] == 2 * exact["state_bytes"] + 2 * 4 * 16 * 4
    recurrent = measure_cell(Cell("linear_attention", problem, "decode", {"causal_chunk": 64}, 0.0), TIMING, 0)
    assert recurrent["state_bytes"] == 2 * 16 * 17 * 4 and recurrent["error_rel_l2"] > 1e-3  # approximate
    longer = dataclasses.replace(problem, kv_len=3001)
    assert (
        measure_cell(Cell("linear_attention", longer, "decode", {"causal_chunk": 64}, 0.0), TIMING, 0)["state_bytes"]
        == recurrent["state_bytes"]
    )
