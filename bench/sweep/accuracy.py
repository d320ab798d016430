"""Error of an output against exact full attention on the same inputs, over sampled query rows.

Exact float64 attention over all rows is too big at long sequences (N=16k, 8 heads: 16 GiB of
scores), so the reference is computed for at most REFERENCE_ROWS query rows spread evenly over the
sequence (every head, every batch); with Nq <= REFERENCE_ROWS every row is compared. On retrieval
inputs (attention_zoo/inputs.py) needle_recall says how many of those rows found their needle.
"""

from __future__ import annotations

import math

import torch

from attention_zoo import Problem, dense_attention, error_metrics
from attention_zoo.inputs import Inputs

REFERENCE_ROWS = 256  # query rows of the float64 error reference


def sampled_rows(q_len: int) -> torch.Tensor:
    """Query rows the error is measured on: all of them, or REFERENCE_ROWS spread from first to last."""
    return torch.linspace(0, q_len - 1, min(q_len, REFERENCE_ROWS)).round().long().unique()


def needle_recall(out: torch.Tensor, v: torch.Tensor, needles: torch.Tensor | None, allowed: torch.Tensor) -> float:
    """The fraction of query rows whose output is nearest (L2) to their needle's value among the values they
    may attend; NaN without needles. out (B, Hq, R, D); v (B, Hkv, Nk, D); needles (B, Hq, R); allowed
    broadcastable to (B, 1, R, Nk). One (sequence, head) at a time: R x Nk distances, never more."""
    if needles is None:
        return math.nan
    batch, q_heads = out.shape[:2]
    group = q_heads // v.shape[1]
    found = 0
    for b in range(batch):
        mask = allowed[b if allowed.shape[0] > 1 else 0, 0]  # (R, Nk)
        for h in range(q_heads):
            values = v[b, h // group].float()
            distance = values.square().sum(-1) - 2 * out[b, h].float() @ values.T  # |v|^2 - 2 out.v, (R, Nk)
            nearest = distance.masked_fill(~mask, math.inf).argmin(-1)
            found += int((nearest == needles[b, h]).sum())
    return found / needles.numel()


def error_vs_exact(problem: Problem, out: torch.Tensor, inputs: Inputs) -> dict[str, float]:
    """error_rel_l2, error_max_abs, error_cosine (and needle_recall) of out against float64 exact attention,
    on the sampled rows."""
    q, k, v = (x.detach() for x in (inputs.q, inputs.k, inputs.v))
    rows = sampled_rows(problem.q_len).to(q.device)
    with torch.no_grad():
        allowed = problem.allowed_mask(rows)
        exact = dense_attention(q[:, :, rows], k, v, allowed)  # (B, Hq, rows, D)
        needles = None if inputs.needles is None else inputs.needles[:, :, rows]
        sampled = out.detach()[:, :, rows]
        return {**error_metrics(sampled, exact), "needle_recall": needle_recall(sampled, v, needles, allowed)}
