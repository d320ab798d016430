"""Decode steps of every entry that declares them, against the float64 dense causal answer at those positions.

For a context of L tokens and two steps of T new tokens each, the reference is the entry's own
dense_reference of the causal self-attention problem of length L + 2T (its window, features, segments),
rows L .. L+2T-1; the steps run on the decode problem (q_len = T, kv_len = L + T), as the bench builds it.
Parametrised over the registry: a newly registered decoding entry is checked without touching this file.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import attention_zoo as z
from attention_zoo.reference import max_logit, normalised_max_error, tolerance

# (batch, q_heads, kv_heads, context L, head_dim, dtype): L = 1, L past several windows, tiles and segments
SHAPES = {
    "len1_mha": (2, 2, 2, 1, 16, "float32"),
    "gqa_d80": (2, 6, 2, 45, 80, "float32"),
    "mqa_long": (1, 4, 1, 77, 32, "float32"),
    "float16_gqa": (2, 4, 2, 50, 32, "float16"),
    "bfloat16_gqa": (2, 4, 2, 50, 32, "bfloat16"),
}
DECODERS = [name for name in z.list_impls() if z.get(name).decode is True]
CASES = [(name, shape, steps) for name in DECODERS for shape in SHAPES for steps in (1, 4)]


def _problems(shape: str, steps: int) -> tuple[z.Problem, z.Problem]:
    """(the square causal problem of L + 2T tokens the reference runs, the decode problem the steps run)."""
    batch, q_heads, kv_heads, context, head_dim, dtype = SHAPES[shape]
    square = z.Problem(batch, q_heads, kv_heads, context + 2 * steps, None, head_dim, True, None, dtype)
    return square, dataclasses.replace(square, q_len=steps, kv_len=context + steps)


@pytest.mark.parametrize(("name", "shape", "steps"), CASES)
def test_decode_steps_match_oracle(name: str, shape: str, steps: int) -> None:
    entry = z.get(name)
    square, decode = _problems(shape, steps)
    reason = entry.decode_reason(decode, entry.oracle_hparams)
    if reason:
        pytest.skip(reason)
    context = decode.kv_len - steps
    q, k, v = dataclasses.replace(square, dtype="float64").make_inputs(seed=4)
    torch.manual_seed(0)
    expected = entry.build(dataclasses.replace(square, dtype="float64"), **entry.oracle_hparams).dense_reference(
        q, k, v
    )
    q, k, v = (x.to(square.torch_dtype) for x in (q, k, v))
    torch.manual_seed(0)
    impl = entry.build_decoder(decode, **entry.oracle_hparams)
    state = impl.decode_state(k[:, :, :context], v[:, :, :context])
    allowed = tolerance(square.dtype, max_logit(q, k))
    for first in (context, context + steps):
        new = slice(first, first + steps)
        out, next_state = impl.decode_step(q[:, :, new], k[:, :, new], v[:, :, new], state)
        again, _ = impl.decode_step(q[:, :, new], k[:, :, new], v[:, :, new], state)
        assert out.shape == q[:, :, new].shape and out.dtype == q.dtype
        assert torch.equal(out, again), "a second step from the same state differs: the step changed its input state"
        error = normalised_max_error(out, expected[:, :, new])
        assert error <= allowed, f"step at {first}: out off by {error:.2e} > {allowed:.2e}"
        assert next_state.position == first + steps
        state = next_state


@pytest.mark.parametrize("name", DECODERS)
def test_bounded_states_do_not_grow_with_the_context(name: str) -> None:
    """Every decoder but the exact KV caches holds a state fixed in L (window, memory, recurrent sums)."""
    entry = z.get(name)
    sizes = []
    for context in (64, 640):  # multiples of every check segment, so a memory holds the same positions
        decode = z.Problem(batch=1, q_heads=2, q_len=1, kv_len=context + 1, head_dim=16, causal=True)
        if entry.decode_reason(decode, entry.oracle_hparams):
            pytest.skip(entry.decode_reason(decode, entry.oracle_hparams))
        impl = entry.build_decoder(decode, **entry.oracle_hparams)
        _, k, v = decode.make_inputs()
        sizes.append(impl.decode_state(k[:, :, :context], v[:, :, :context]).nbytes)
    if entry.exact:
        assert sizes[1] == 10 * sizes[0], sizes  # the whole cache: proportional to L
    else:
        assert sizes[1] == sizes[0], sizes


@pytest.mark.parametrize("name", z.list_impls())
def test_every_entry_decodes_or_says_why(name: str) -> None:
    entry = z.get(name)
    decode = z.Problem(q_len=1, kv_len=9, head_dim=16, causal=True)
    reason = entry.decode_reason(decode)
    assert entry.decode is True or (isinstance(entry.decode, str) and entry.decode.strip()), entry.decode
    if entry.decode is not True:
        assert reason and entry.decode in reason
        with pytest.raises(z.UnsupportedError):
            entry.build_decoder(decode)
    non_causal = entry.decode_reason(dataclasses.replace(decode, causal=False))
    assert non_causal, "a non-causal decode problem needs a reason"
