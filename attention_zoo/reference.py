"""The float64 dense oracle every entry is checked against, and the error metrics against it."""

from __future__ import annotations

import math

import torch

from attention_zoo.problem import compute_dtype

# Normalised max error allowed against the float64 oracle: max|out - ref| / max(1, max|ref|).
TOLERANCES = {
    "float64": 1e-10,
    "float32": 1e-4,
    "float16": 1e-2,
    "bfloat16": 3e-2,
}


def tolerance(dtype: str, max_logit: float = 0.0) -> float:
    """The error allowed for a dtype, widened where logits are large: max(TOLERANCES[dtype], 2 eps |logit|).

    A logit is rounded to the compute dtype's eps relative to its size (float32 for half inputs), and
    softmax turns that absolute error in the exponent into the same relative error in the weights.
    """
    return max(TOLERANCES[dtype], 2.0 * torch.finfo(compute_dtype(dtype)).eps * max_logit)


def expand_kv_heads(x: torch.Tensor, q_heads: int) -> torch.Tensor:
    """(B, Hkv, N, D) -> (B, Hq, N, D): key/value head h serves query heads h*G .. h*G+G-1."""
    return x.repeat_interleave(q_heads // x.shape[1], dim=1)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None = None,
    scale: float | None = None,
    score_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(Q K^T * scale + score_bias, masked to `allowed`) V in float64, materialising every score.

    q (B, Hq, Nq, D); k, v (B, Hkv, Nk, D); allowed broadcastable to (B, Hq, Nq, Nk), True = attend.
    A query row with no allowed key outputs zeros.
    """
    q, k, v = q.double(), expand_kv_heads(k.double(), q.shape[1]), expand_kv_heads(v.double(), q.shape[1])
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale  # (B, Hq, Nq, Nk)
    if score_bias is not None:
        scores = scores + score_bias.double()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v


def max_logit(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> float:
    """max |q . k| * scale over every (query, key) pair, scale 1/sqrt(d) by default; GQA heads expanded."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    k = expand_kv_heads(k.detach().double(), q.shape[1])
    return ((q.detach().double() @ k.transpose(-1, -2)).abs().max() * scale).item()


def normalised_max_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max|out - ref| / max(1, max|ref|): relative for large values, absolute near zero.

    The floor matters where the exact answer is 0 (the gradient of a softmax over one key).
    """
    ref = ref.double()
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()


def error_metrics(out: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """How far an output lands from exact attention: relative L2, max abs, and the mean over query rows of the
    cosine similarity of each output row with the exact one (1 is the same direction)."""
    out, exact = out.double(), exact.double()
    diff = out - exact
    return {
        "error_rel_l2": (diff.norm() / exact.norm().clamp_min(1e-30)).item(),
        "error_max_abs": diff.abs().max().item(),
        "error_cosine": torch.nn.functional.cosine_similarity(out, exact, dim=-1).mean().item(),
    }
