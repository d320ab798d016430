"""landmark_softmax's chunked softmax attentions against autograd through the formed float64 scores."""

import pytest
import torch

from attention_zoo.impls import landmark_softmax


def _formed(queries, k, v, key_mask, scale):
    scores = queries @ k.transpose(-1, -2) * scale
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _check(fn, inputs, key_mask=None):
    """fn in float64 (its chunks, online softmax and written-out backward) against autograd's formed scores."""
    scale = inputs[0].shape[-1] ** -0.5
    results = []
    for ours in (True, False):
        xs = [x.detach().double().requires_grad_() for x in inputs]
        extra = (key_mask, scale) if fn is landmark_softmax.landmarks_over_keys else (scale,)
        out = fn(*xs, *extra) if ours else _formed(*xs, key_mask, scale)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        results.append((out, *torch.autograd.grad(out, xs, grad)))
    for ours, oracle in zip(*results, strict=True):
        torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_bytes", [64, 4096, 1 << 21])
def test_queries_over_landmarks_matches_formed_softmax(monkeypatch, chunk_bytes):
    monkeypatch.setattr(landmark_softmax, "CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(0)
    q, keys, values = (torch.randn(2, 3, n, 16, generator=gen) * 2 for n in (97, 5, 5))
    _check(landmark_softmax.queries_over_landmarks, (q, keys, values))


@pytest.mark.parametrize("chunk_bytes", [64, 4096, 1 << 21])
def test_landmarks_over_keys_matches_formed_softmax_with_hidden_keys(monkeypatch, chunk_bytes):
    """Keys hidden at both ends, so whole chunks (the first included) see no key."""
    monkeypatch.setattr(landmark_softmax, "CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(0)
    queries, k, v = (torch.randn(2, 3, n, 16, generator=gen) * 2 for n in (6, 131, 131))
    key_mask = torch.ones(2, 1, 1, 131, dtype=torch.bool)
    key_mask[0, ..., :40] = False
    key_mask[1, ..., 90:] = False
    _check(landmark_softmax.landmarks_over_keys, (queries, k, v), key_mask)
    _check(landmark_softmax.landmarks_over_keys, (queries, k, v))
