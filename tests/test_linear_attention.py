"""linear_attention's chunked paths: the causal prefix sums over chunks, many causal chunks against float64,
and the non-causal passes in row chunks."""

import pytest
import torch

import attention_zoo as z
from attention_zoo.impls import linear_attention
from attention_zoo.impls.linear_attention import _exclusive_sums_
from attention_zoo.reference import TOLERANCES, normalised_max_error


def _assert_matches_float64(attention, q, k, v) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """attention(q, k, v) and its gradients against dense_reference's float64; returns (out, gradients)."""
    out = attention(q, k, v)
    reference = attention.dense_reference(q, k, v)
    assert normalised_max_error(out, reference) < TOLERANCES["float32"]
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    theirs = torch.autograd.grad(reference, (q, k, v), grad.double())
    for a, b in zip(ours, theirs, strict=True):
        assert normalised_max_error(a, b) < TOLERANCES["float32"]
    return out, ours


@pytest.mark.parametrize("reverse", [False, True], ids=["earlier", "later"])
def test_exclusive_sums_add_the_carry_to_the_steps_before_each_chunk(reverse: bool) -> None:
    steps, carry = torch.randn(3, 9, 4, 5, dtype=torch.float64), torch.randn(3, 4, 5, dtype=torch.float64)
    ordered = steps.flip(1) if reverse else steps
    expected = carry[:, None] + ordered.cumsum(1) - ordered  # carry + the steps strictly before, in that order
    sums = torch.empty_like(steps)
    past = _exclusive_sums_(sums, steps, carry, reverse=reverse)
    torch.testing.assert_close(sums, expected.flip(1) if reverse else expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(past, carry + steps.sum(1), rtol=0, atol=1e-12)


def test_many_chunks_forward_and_gradients_match_float64() -> None:
    problem = z.Problem(q_len=1000, q_heads=4, kv_heads=2, head_dim=16, causal=True)
    attention = z.get("linear_attention").build(problem, causal_chunk=64)  # 16 chunks, the last one short
    q, k, v = (torch.randn(1, h, 1000, 16, requires_grad=True) for h in (4, 2, 2))
    _assert_matches_float64(attention, q, k, v)


@pytest.mark.parametrize(
    "problem",
    [
        z.Problem(batch=2, q_heads=6, kv_heads=2, q_len=300, head_dim=16, causal=True, kv_valid_lens=(300, 123)),
        # cross: 170 keys before the first query's position, in several blocks of their own
        z.Problem(batch=2, q_heads=2, q_len=130, kv_len=300, head_dim=16, causal=True, kv_valid_lens=(300, 250)),
    ],
    ids=["padded_gqa", "cross_padded"],
)
def test_causal_blocks_forward_and_gradients_match_float64(problem, monkeypatch: pytest.MonkeyPatch) -> None:
    # blocks of 3 chunks of 16 query positions (all heads): several blocks, the last one short, its last chunk too
    rows_bytes = problem.batch * problem.q_heads * problem.head_dim * 4
    monkeypatch.setattr(linear_attention, "CAUSAL_BLOCK_BYTES", rows_bytes * 16 * 3)
    attention = z.get("linear_attention").build(problem, causal_chunk=16)
    q, k, v = problem.make_inputs(seed=3, requires_grad=True)
    with torch.no_grad():
        without_graph = attention(q, k, v)
    out, ours = _assert_matches_float64(attention, q, k, v)
    torch.testing.assert_close(without_graph, out.detach(), rtol=0, atol=0)
    valid = problem.kv_valid_lens[1]
    assert ours[1][1, :, valid:].abs().max() == 0 and ours[2][1, :, valid:].abs().max() == 0  # padded keys


def test_non_causal_row_chunks_forward_and_gradients_match_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = z.Problem(batch=2, q_heads=6, kv_heads=2, q_len=300, head_dim=16, kv_valid_lens=(300, 123))
    # 64 rows a chunk: 5 chunks of keys, 15 of the stacked query rows (3 heads a kv head), the last ones short
    monkeypatch.setattr(linear_attention, "ROW_CHUNK_BYTES", 2 * 2 * 16 * 4 * 64)
    attention = z.get("linear_attention").build(problem)
    q, k, v = problem.make_inputs(seed=2, requires_grad=True)
    with torch.no_grad():
        without_graph = attention(q, k, v)
    out, ours = _assert_matches_float64(attention, q, k, v)
    torch.testing.assert_close(without_graph, out.detach(), rtol=0, atol=0)
    assert ours[1][1, :, 123:].abs().max() == 0 and ours[2][1, :, 123:].abs().max() == 0  # padded keys
