"""Error of a forward output against exact full attention on the same inputs, over sampled query rows.

Exact float64 attention over all rows is too big at long sequences (N=16k, 8 heads: 16 GiB of
scores), so the reference is computed for at most REFERENCE_ROWS query rows spread evenly over the
sequence (every head, every batch); with Nq <= REFERENCE_ROWS every row is compared.
"""

from __future__ import annotations

import torch

from attention_zoo import Problem, dense_attention, error_metrics

REFERENCE_ROWS = 256  # query rows of the float64 error reference


def sampled_rows(q_len: int) -> torch.Tensor:
    """Query rows the error is measured on: all of them, or REFERENCE_ROWS spread from first to last."""
    return torch.linspace(0, q_len - 1, min(q_len, REFERENCE_ROWS)).round().long().unique()


def error_vs_exact(
    problem: Problem, out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> dict[str, float]:
    """error_rel_l2 and error_max_abs of out against float64 exact attention, on the sampled rows."""
    rows = sampled_rows(problem.q_len).to(q.device)
    with torch.no_grad():
        exact = dense_attention(q[:, :, rows], k, v, problem.allowed_mask(rows))  # (B, Hq, rows, D)
        return error_metrics(out[:, :, rows], exact)
