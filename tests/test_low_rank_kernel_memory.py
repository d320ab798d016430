"""Linformer, Performer and Transformer-XL beyond the oracle: error trends, stability, memory, reasons.

The oracle suite (test_oracle.py) already checks each against its own float64 dense form; here are
the properties that form cannot show: approximation error falling as the rank / feature count
grows, FAVOR+ staying finite at long lengths, Transformer-XL's detached memory, and the messages.
"""

from __future__ import annotations

import pytest
import torch

import attention_zoo as z
from attention_zoo.impls.transformer_xl import segment_memory_allowed
from attention_zoo.reference import TOLERANCES, dense_attention, normalised_max_error


def _mean_error_vs_exact(name: str, problem: z.Problem, input_scale: float, **hparams) -> float:
    """Relative L2 error against exact attention, averaged over four seeds of inputs and projections."""
    errors = []
    for seed in range(4):
        q, k, v = problem.make_inputs(seed=seed)
        q, k = q * input_scale, k * input_scale
        out = z.get(name).build(problem, seed=seed, **hparams)(q, k, v)
        errors.append(z.error_metrics(out, dense_attention(q, k, v))["error_rel_l2"])
    return sum(errors) / len(errors)


def test_linformer_error_falls_as_proj_len_grows_towards_n() -> None:
    problem = z.Problem(batch=1, q_heads=2, q_len=128, head_dim=32)
    errors = [_mean_error_vs_exact("linformer", problem, 1.0, proj_len=k) for k in (8, 32, 128)]
    # random projections shrink the projected values' spread as k grows: error falls about as N/k
    assert errors[1] < 0.6 * errors[0] and errors[2] < 0.6 * errors[1], errors


def test_performer_error_falls_as_num_features_grows() -> None:
    # FAVOR+ variance grows like exp(|q|^2/sqrt(d)): at unit-variance inputs it needs far more than
    # 256 features, so the inputs are scaled down to a regime where the 1/sqrt(m) trend shows
    problem = z.Problem(batch=1, q_heads=2, q_len=128, head_dim=16)
    errors = [_mean_error_vs_exact("performer", problem, 0.5, num_features=m) for m in (16, 64, 256)]
    assert errors[1] < 0.8 * errors[0] and errors[2] < 0.8 * errors[1], errors


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_performer_is_finite_on_long_unit_normal_inputs(head_dim: int, causal: bool) -> None:
    problem = z.Problem(batch=1, q_heads=1, q_len=4096, head_dim=head_dim, causal=causal)
    q, k, v = problem.make_inputs(seed=0)
    out = z.get("performer").build(problem)(q, k, v)
    assert torch.isfinite(out).all()


def test_performer_redraw_draws_new_features_and_the_oracle_uses_the_last() -> None:
    problem = z.Problem(batch=1, q_heads=2, q_len=40, head_dim=16)
    q, k, v = problem.make_inputs(seed=0)
    impl = z.get("performer").build(problem, num_features=16, redraw=True)
    first = impl(q, k, v)
    second = impl(q, k, v)
    assert not torch.allclose(first, second)
    assert normalised_max_error(second, impl.dense_reference(q, k, v)) <= TOLERANCES["float32"]


def test_linformer_ignores_padded_keys_and_values() -> None:
    problem = z.Problem(batch=2, q_heads=2, q_len=30, head_dim=16, kv_valid_lens=(30, 11))
    impl = z.get("linformer").build(problem, proj_len=8)
    q, k, v = problem.make_inputs(seed=0)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 11:], v2[1, :, 11:] = 100.0, -100.0
    torch.testing.assert_close(impl(q, k, v), impl(q, k2, v2))


def test_linformer_causal_is_unsupported_with_the_papers_reason() -> None:
    reason = z.get("linformer").unsupported_reason(z.Problem(q_len=64, causal=True))
    assert reason is not None and "not causal" in reason and "\n" not in reason
    with pytest.raises(z.UnsupportedError, match="not causal"):
        z.get("linformer").build(z.Problem(q_len=64, causal=True))


@pytest.mark.parametrize(
    ("problem", "phrase"),
    [(z.Problem(q_len=64), "causal by construction"), (z.Problem(q_len=32, kv_len=64, causal=True), "q_len == kv_len")],
)
def test_transformer_xl_unsupported_problems_have_reasons(problem: z.Problem, phrase: str) -> None:
    assert phrase in z.get("transformer_xl").unsupported_reason(problem)


def test_transformer_xl_memory_is_attended_but_detached() -> None:
    problem = z.Problem(batch=1, q_heads=2, q_len=32, head_dim=16, causal=True)
    impl = z.get("transformer_xl").build(problem, segment_len=8, mem_len=8)
    q, k, v = problem.make_inputs(seed=0, requires_grad=True)
    out = impl(q, k, v)
    # segment 2 (positions 8..15) does read segment 1's keys and values through the memory ...
    k2 = k.detach().clone()
    k2[:, :, :8] += 1.0
    assert not torch.allclose(impl(q, k2, v)[:, :, 8:16], out[:, :, 8:16])
    # ... but no gradient flows back into them along that path
    out[:, :, 8:16].sum().backward()
    assert k.grad[:, :, :8].abs().max() == 0 and v.grad[:, :, :8].abs().max() == 0
    assert k.grad[:, :, 8:16].abs().max() > 0 and q.grad[:, :, 8:16].abs().max() > 0


def test_transformer_xl_without_relative_positions_is_exact_attention_under_the_segment_mask() -> None:
    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=45, head_dim=16, causal=True, kv_valid_lens=(45, 30))
    impl = z.get("transformer_xl").build(problem, segment_len=10, mem_len=6, relative=False)
    q, k, v = problem.make_inputs(seed=0)
    pos = torch.arange(problem.q_len)
    allowed = problem.allowed_mask() & segment_memory_allowed(pos, pos, 10, 6)
    assert normalised_max_error(impl(q, k, v), dense_attention(q, k, v, allowed)) <= TOLERANCES["float32"]


def test_transformer_xl_padded_gqa_matches_its_oracle_with_gradients() -> None:
    # the oracle's padded shapes are non-causal or cross, which Transformer-XL does not run
    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=45, head_dim=16, causal=True, kv_valid_lens=(45, 30))
    impl = z.get("transformer_xl").build(problem, segment_len=10, mem_len=6)
    q, k, v = problem.make_inputs(seed=0, requires_grad=True)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    out = impl(q, k, v)
    out.backward(grad_out)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    expected = impl.dense_reference(q64, k64, v64)
    expected.backward(grad_out.double())
    assert normalised_max_error(out, expected) <= TOLERANCES["float32"]
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert normalised_max_error(got, want) <= TOLERANCES["float32"]


@pytest.mark.parametrize(
    ("name", "field", "value", "allowed"),
    [
        ("linformer", "proj_len", 0, "integer >= 1"),
        ("linformer", "max_len", 16, "kv_len (64)"),
        ("linformer", "share_kv", "yes", "true or false"),
        ("performer", "num_features", -4, "integer >= 1"),
        ("performer", "causal_chunk", 1.5, "an integer"),
        ("performer", "redraw", 1, "true or false"),
        ("transformer_xl", "segment_len", 0, "integer >= 1"),
        ("transformer_xl", "mem_len", -1, "integer >= 0"),
    ],
)
def test_bad_hyperparameter_is_one_line_naming_field_and_value(name: str, field: str, value, allowed: str) -> None:
    with pytest.raises(z.HyperparameterError) as error:
        z.get(name).build(z.Problem(q_len=64, causal=name == "transformer_xl"), **{field: value})
    message = str(error.value)
    assert "\n" not in message and f"{field}={value!r}" in message and allowed in message


@pytest.mark.parametrize("causal", [False, True])
def test_performer_chunks_change_nothing_but_the_order_of_the_sums(causal: bool) -> None:
    # one position at a time, ragged chunks and one chunk for everything: the online stabiliser and the
    # rescaled summaries give the same output and gradients
    problem = z.Problem(batch=2, q_heads=4, kv_heads=2, q_len=50, head_dim=16, causal=causal, kv_valid_lens=(50, 33))
    q, k, v = problem.make_inputs(seed=3, requires_grad=True)
    results = []
    for chunk in (1, 7, 50):
        impl = z.get("performer").build(problem, num_features=32, chunk=chunk, causal_chunk=chunk)
        out = impl(q, k, v)
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert normalised_max_error(a, b) <= TOLERANCES["float32"]
