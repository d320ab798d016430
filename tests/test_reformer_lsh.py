"""reformer_lsh's grouped passes: many groups of sorted chunks (crossing heads, the last one short) against
float64, forward and gradients, causal and padded."""

import pytest
import torch

import attention_zoo as z
from attention_zoo.impls import reformer
from attention_zoo.reference import TOLERANCES, normalised_max_error


@pytest.mark.parametrize("causal", [False, True])
def test_many_groups_forward_and_gradients_match_float64(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    # 2 rounds x 100 positions = 200 places a head: 25 chunks of 8; groups of 7 chunks cross the heads' edges
    monkeypatch.setattr(reformer, "GROUP_PLACES", 7 * 8)
    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=100, head_dim=16, causal=causal,
                        kv_valid_lens=(100, 61))  # fmt: skip
    attention = z.get("reformer_lsh").build(problem, bucket_size=8, n_hashes=2)
    q, k, v = problem.make_inputs(seed=4, requires_grad=True)
    out = attention(q, k, v)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    reference = attention.dense_reference(q64, k64, v64)
    assert normalised_max_error(out, reference) < TOLERANCES["float32"]
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, v), grad)
    theirs = torch.autograd.grad(reference, (q64, v64), grad.double())
    for label, a, b in zip("qv", ours, theirs, strict=True):
        assert normalised_max_error(a, b) < TOLERANCES["float32"], f"d{label}"
