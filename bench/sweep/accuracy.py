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


def allowed_rows(problem: Problem, rows: torch.Tensor) -> torch.Tensor:
    """The rows of problem.allowed_mask(), built for the sampled rows only: bool (B, 1, rows, Nk)."""
    rows = rows.to(problem.device)
    k_pos = torch.arange(problem.kv_len, device=problem.device)
    allowed = torch.ones(len(rows), problem.kv_len, dtype=torch.bool, device=problem.device)
    if problem.causal:
        allowed &= k_pos[None, :] <= rows[:, None] + problem.causal_offset
    allowed = allowed.expand(problem.batch, 1, len(rows), problem.kv_len)
    if problem.kv_valid_lens is not None:
        valid = torch.tensor(problem.kv_valid_lens, device=problem.device)
        allowed = allowed & (k_pos < valid[:, None, None, None])
    return allowed


def error_vs_exact(
    problem: Problem, out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> dict[str, float]:
    """error_rel_l2 and error_max_abs of out against float64 exact attention, on the sampled rows."""
    rows = sampled_rows(problem.q_len).to(q.device)
    with torch.no_grad():
        exact = dense_attention(q[:, :, rows], k, v, allowed_rows(problem, rows))  # (B, Hq, rows, D)
        return error_metrics(out[:, :, rows], exact)
