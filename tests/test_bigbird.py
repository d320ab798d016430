"""bigbird's chunked passes: many chunks of query blocks (the last one short) against float64, with and
without gradients."""

import pytest
import torch

import attention_zoo as z
from attention_zoo.impls import bigbird
from attention_zoo.reference import TOLERANCES, normalised_max_error


def test_many_chunks_forward_and_gradients_match_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=300, head_dim=16, kv_valid_lens=(300, 170))
    attention = z.get("bigbird").build(problem, block_size=8, num_random_blocks=2)
    rows = attention.middle_rows  # (B, Hq, nm, L): 36 middle blocks of 56 gathered rows
    per_block = rows.shape[0] * rows.shape[1] * rows.shape[3] * problem.head_dim * 4
    monkeypatch.setattr(bigbird, "CHUNK_BYTES", 5 * per_block)  # 8 chunks of 5 blocks, the last of 1
    assert len(bigbird._chunks(rows, problem.head_dim, 4)) == 8
    q, k, v = problem.make_inputs(seed=3, requires_grad=True)
    with torch.no_grad():
        without_grad = attention(q, k, v)
    out = attention(q, k, v)
    # the middle blocks' passes agree exactly; the global rows take SDPA without a graph, key chunks with one
    assert normalised_max_error(out, without_grad) < 1e-6
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    reference = attention.dense_reference(q64, k64, v64)
    assert normalised_max_error(out, reference) < TOLERANCES["float32"]
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    theirs = torch.autograd.grad(reference, (q64, k64, v64), grad.double())
    for label, a, b in zip("qkv", ours, theirs, strict=True):
        assert normalised_max_error(a, b) < TOLERANCES["float32"], f"d{label}"
