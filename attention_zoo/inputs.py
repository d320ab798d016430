"""Input distributions for q, k, v: i.i.d. normal, and three structured kinds that real attention heads show.

On i.i.d. N(0, 1) inputs exact attention is nearly uniform (logits of standard deviation 1 over N keys)
and averages the values toward zero, so every approximation reads as broken. Real heads attend
locally, to a few retrieved tokens, or through low-rank patterns; each distribution below builds one
of those structures, seeded, for any problem (GQA: the query heads of a group share their key/value
head's structure; positions are bottom-right aligned as in causal attention, query i at i + Nk - Nq).
Values are always i.i.d. N(0, 1): they carry the content, the structure is in q and k.

- iid: q, k, v ~ N(0, 1) (Problem.make_inputs, the same numbers).
- local: RoPE-style rotations of one unit vector per (sequence, key/value head): on each coordinate pair
  f = 1..D/2, u_p = (cos(phi_f + p w_f), sin(phi_f + p w_f)) / sqrt(D/2), with phases phi_f uniform in
  [0, 2 pi) and frequencies w_f ~ N(0, 1 / LOCAL_SCALE^2). q_p = a u_p + s e, k_p = a u_p + s e' with
  e, e' ~ N(0, I), a = sqrt(LOCAL_PEAK_LOGIT sqrt(D)), s = LOCAL_NOISE. Then u_p . u_r is the mean of
  cos((p - r) w_f), whose expectation is exp(-(p - r)^2 / (2 LOCAL_SCALE^2)) (random Fourier features of a
  Gaussian kernel), so the logit q_p . k_r / sqrt(D) is about LOCAL_PEAK_LOGIT at distance 0 and decays
  with distance: the weights are local.
- retrieval: keys are random directions of norm sqrt(D) (N(0, I) rescaled); each query draws a needle,
  one key uniformly among those it may attend (causal and padding respected), and points at it:
  q_i = RETRIEVAL_LOGIT k_j / sqrt(D), so its logit on the needle is exactly RETRIEVAL_LOGIT and on any
  other key RETRIEVAL_LOGIT times the cosine of two random directions (about 1 / sqrt(D)): exact
  attention puts almost all of each query's weight on its needle.
- low_rank: q and k in one rank-r subspace per (sequence, key/value head), r = max(1, D // 8): an
  orthonormal basis U (D x r), q = sqrt(D / r) a U^T and k = sqrt(D / r) b U^T with a, b ~ N(0, I_r),
  so |q|^2 and |k|^2 are about D as for iid, and the logits have rank r (standard deviation sqrt(D / r)).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from attention_zoo.problem import Problem

INPUTS = ("iid", "local", "retrieval", "low_rank")
LOCAL_SCALE = 16.0  # positions over which local similarity falls to exp(-1/2)
LOCAL_PEAK_LOGIT = 10.0  # logit of a query on its own position's key (before noise)
LOCAL_NOISE = 0.5  # standard deviation of the noise added to every coordinate of q and k
RETRIEVAL_LOGIT = 30.0  # logit of a query on its needle
LOW_RANK_DIVISOR = 8  # rank r = max(1, D // LOW_RANK_DIVISOR)


@dataclass(frozen=True)
class Inputs:
    """q (B, Hq, Nq, D), k and v (B, Hkv, Nk, D); needles (B, Hq, Nq), the key each query points at (retrieval)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    needles: torch.Tensor | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Unpacks as q, k, v, like Problem.make_inputs."""
        return iter((self.q, self.k, self.v))


def low_rank(head_dim: int) -> int:
    """The rank of low_rank's query/key subspace."""
    return max(1, head_dim // LOW_RANK_DIVISOR)


def draw_inputs(problem: Problem, distribution: str = "iid", seed: int = 0) -> Inputs:
    """The problem's q, k, v (and needles) from one distribution, the same for the same (problem, seed)."""
    if distribution not in INPUTS:
        raise ValueError(f"inputs={distribution!r} is unknown: allowed are {', '.join(INPUTS)}")
    if distribution == "iid":
        return Inputs(*problem.make_inputs(seed=seed))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    b, hq, hkv, nq, nk, d = (problem.batch, problem.q_heads, problem.kv_heads, problem.q_len, problem.kv_len,
                             problem.head_dim)  # fmt: skip

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    v = normal(b, hkv, nk, d)
    needles = None
    if distribution == "local":
        q, k = _local(problem, normal, generator)
    elif distribution == "retrieval":
        k = normal(b, hkv, nk, d)
        k = math.sqrt(d) * k / k.norm(dim=-1, keepdim=True)
        needles = _needles(problem, generator)
        group = torch.arange(hq) // problem.group_size
        needle_keys = k[torch.arange(b)[:, None, None], group[None, :, None], needles]  # (B, Hq, Nq, D)
        q = RETRIEVAL_LOGIT / math.sqrt(d) * needle_keys
    else:
        r = low_rank(d)
        basis = torch.linalg.qr(normal(b, hkv, d, r)).Q  # (B, Hkv, D, r), orthonormal columns
        scale = math.sqrt(d / r)
        k = scale * normal(b, hkv, nk, r) @ basis.transpose(-1, -2)
        q = scale * normal(b, hq, nq, r) @ basis.repeat_interleave(problem.group_size, 1).transpose(-1, -2)

    def placed(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=problem.device, dtype=problem.torch_dtype)

    return Inputs(placed(q), placed(k), placed(v), None if needles is None else needles.to(problem.device))


def _local(problem: Problem, normal, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k of the local distribution: u_p, a phase-shifted rotation per position, plus noise."""
    b, hkv, d = problem.batch, problem.kv_heads, problem.head_dim
    pairs = max(1, d // 2)
    frequencies = normal(b, hkv, 1, pairs) / LOCAL_SCALE
    phases = 2 * math.pi * torch.rand(b, hkv, 1, pairs, generator=generator, dtype=torch.float64)

    def rotated(positions: torch.Tensor) -> torch.Tensor:  # (B, Hkv, len, D), |u_p| = 1
        angle = phases + positions[:, None] * frequencies  # (B, Hkv, len, pairs)
        u = torch.zeros(b, hkv, len(positions), d, dtype=torch.float64)  # an odd D's last coordinate stays 0
        u[..., 0 : 2 * pairs : 2], u[..., 1 : 2 * pairs : 2] = angle.cos(), angle.sin()
        return u / math.sqrt(pairs)

    amplitude = math.sqrt(LOCAL_PEAK_LOGIT * math.sqrt(d))
    keys = torch.arange(problem.kv_len, dtype=torch.float64)
    queries = keys[problem.causal_offset :]  # bottom-right aligned: query i at position i + Nk - Nq
    k = amplitude * rotated(keys) + LOCAL_NOISE * normal(b, hkv, problem.kv_len, d)
    q = amplitude * rotated(queries).repeat_interleave(problem.group_size, 1)
    return q + LOCAL_NOISE * normal(b, problem.q_heads, problem.q_len, d), k


def _needles(problem: Problem, generator: torch.Generator) -> torch.Tensor:
    """(B, Hq, Nq) long: for each query a key drawn uniformly among the keys it may attend."""
    b, hq, nq = problem.batch, problem.q_heads, problem.q_len
    visible = torch.full((b, 1, nq), problem.kv_len, dtype=torch.float64)  # keys 0..visible-1 are allowed
    if problem.causal:
        visible = visible.minimum(torch.arange(nq, dtype=torch.float64) + problem.causal_offset + 1)
    if problem.kv_valid_lens is not None:
        visible = visible.minimum(torch.tensor(problem.kv_valid_lens, dtype=torch.float64)[:, None, None])
    uniform = torch.rand(b, hq, nq, generator=generator, dtype=torch.float64)
    return (uniform * visible).long().clamp_max(visible.long() - 1)
