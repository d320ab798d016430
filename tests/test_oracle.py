"""Every registered entry against the float64 dense form of what it claims to compute.

Parametrised over list_impls(): a newly registered entry is checked here without editing this file.
Shapes are chosen to break naive code: length 1, lengths that are no multiple of any tile, an odd
head dim, batches with different padding, GQA and MQA, cross-attention, and causal with Nq != Nk
(bottom-right aligned). Entries run with their check_hparams, small enough to give several tiles,
windows or segments at these lengths.
"""

from __future__ import annotations

import pytest
import torch

import attention_zoo as z
from attention_zoo.reference import TOLERANCES, normalised_max_error

SHAPES = {
    "len1": z.Problem(batch=1, q_heads=2, q_len=1, head_dim=16),
    "ragged_d80": z.Problem(batch=1, q_heads=2, q_len=77, head_dim=80),
    "padded_batch": z.Problem(batch=3, q_heads=2, q_len=61, head_dim=32, kv_valid_lens=(61, 17, 40)),
    "gqa": z.Problem(batch=2, q_heads=6, kv_heads=2, q_len=50, head_dim=32),
    "mqa_causal": z.Problem(batch=1, q_heads=4, kv_heads=1, q_len=70, head_dim=32, causal=True),
    "cross": z.Problem(batch=2, q_heads=2, q_len=33, kv_len=70, head_dim=32),
    "cross_q_longer": z.Problem(batch=1, q_heads=2, q_len=45, kv_len=20, head_dim=32),
    "causal": z.Problem(batch=2, q_heads=2, q_len=83, head_dim=64, causal=True),
    "causal_cross_padded_gqa": z.Problem(
        batch=2, q_heads=4, kv_heads=2, q_len=19, kv_len=70, head_dim=48, causal=True, kv_valid_lens=(70, 52)
    ),
}
CASES = [(name, shape) for name in z.list_impls() for shape in SHAPES]


def _build_or_skip(name: str, problem: z.Problem, mode: str) -> z.Attention:
    entry = z.get(name)
    reason = entry.unsupported_reason(problem, mode)
    if reason:
        assert isinstance(reason, str) and reason.strip(), f"{name} gave an empty unsupported reason"
        pytest.skip(f"{name}: {reason}")
    torch.manual_seed(0)
    return entry.build(problem, **entry.check_hparams)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_forward_matches_oracle(name: str, shape: str) -> None:
    problem = SHAPES[shape]
    impl = _build_or_skip(name, problem, "forward")
    q, k, v = problem.make_inputs(seed=1)
    out = impl(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    expected = impl.dense_reference(q.double(), k.double(), v.double())
    assert normalised_max_error(out, expected) <= TOLERANCES[problem.dtype]


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_gradients_match_oracle(name: str, shape: str) -> None:
    problem = SHAPES[shape]
    impl = _build_or_skip(name, problem, "backward")
    q, k, v = problem.make_inputs(seed=2, requires_grad=True)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(q)
    torch.autograd.backward(impl(q, k, v), grad_out)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    torch.autograd.backward(impl.dense_reference(q64, k64, v64), grad_out.double())
    for label, got, expected in (("dq", q.grad, q64.grad), ("dk", k.grad, k64.grad), ("dv", v.grad, v64.grad)):
        error = normalised_max_error(got, expected)
        assert error <= TOLERANCES[problem.dtype], f"{label} off by {error:.2e}"


@pytest.mark.parametrize("name", z.list_impls())
def test_every_entry_states_its_capabilities(name: str) -> None:
    entry = z.get(name)
    assert entry.family in z.registry.FAMILIES
    assert entry.doc, f"{name} needs a one-line docstring"
    assert entry.time.exponent > 0 and entry.memory.exponent >= 0
    assert entry.flops(z.Problem(q_len=128)) > 0
