"""Nystromformer (Xiong et al. 2021): softmax attention through m landmarks and a Nystrom pseudo-inverse, O(N*m).

    out = softmax(Q K~^T) pinv(softmax(Q~ K~^T)) (softmax(Q~ K^T) V)

with scores scaled by 1/sqrt(d) (q and k each by d^-1/4, as the paper's code). Conventions:
- Landmarks Q~, K~ are segment means: m contiguous segments, position p in segment floor(p*m/N)
  (so N need not be a multiple of m; when it is, these are the paper's reshape-and-mean segments).
- pinv is the paper's iterative Moore-Penrose approximation, `pinv_iterations` steps (6 in the paper)
  of Z <- Z (13I - AZ (15I - AZ (7I - AZ))) / 4 from Z0 = A^T / max_j sum_i A_ij, the max taken per
  sequence and head (HF's inv_coeff_init_option; the paper's and HF's default take one max over the
  whole batch and every head, which couples sequences: `global_init` in `nystrom_dense`).
- Padding, as the paper's code: padded keys are zeroed before the key landmarks are taken (they
  count, as zeros, in their segment's mean) and masked out of softmax(Q~ K^T). Queries are all real.
- When num_landmarks >= min(Nq, Nk) the landmarks would not compress anything: exact softmax attention,
  as the paper's code does at num_landmarks == seq_len.
- Not causal: every landmark mixes a whole segment, future positions included.
- Half precision computes in float32 (the iterative inverse needs it); the output is in the input dtype.
- softmax(Q~ K^T) V and softmax(Q K~^T) (pinv(...) softmax(Q~ K^T) V) are softmax attentions (m landmark
  queries over N keys, N queries over m landmark keys): SDPA's fused kernel where no graph is built, and
  otherwise chunks of the long side forward and backward (`landmark_softmax`): only kernels 1 and 3
  themselves, (N x m) each, are kept for the backward, not their scores or autograd's intermediates.
- Landmarks are segment sums scaled by 1/count: a mean's backward would divide a whole-input tensor.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from attention_zoo.impls.landmark_softmax import landmarks_over_keys, queries_over_landmarks
from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention, expand_kv_heads
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast


def segment_ids(length: int, segments: int, device: torch.device | str) -> torch.Tensor:
    """(length,) long: each position's segment, floor(p * segments / length); none is empty if length >= segments."""
    return torch.arange(length, device=device) * segments // length


def segment_means(x: torch.Tensor, segments: int) -> torch.Tensor:
    """(..., N, d) -> (..., m, d): the mean of each of m contiguous segments of positions."""
    n = x.shape[-2]
    if n % segments == 0:  # the sum's backward is a broadcast view; the division is on the (m, d) result
        return x.unflatten(-2, (segments, n // segments)).sum(-2).div_(n // segments)
    ids = segment_ids(n, segments, x.device)
    sums = x.new_zeros(*x.shape[:-2], segments, x.shape[-1]).index_add(x.dim() - 2, ids, x)
    return sums / torch.bincount(ids, minlength=segments).to(x.dtype)[:, None]


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """The Nystromformer's Moore-Penrose iteration on (..., m, m), from Z0 = A^T / (max column sum per matrix).

    Each step's 13I - AZ (15I - AZ (7I - AZ)) is two baddbmm calls on AZ (the identity their input), with
    the step's 1/4 folded into the second: no elementwise pass over its products.
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    a3 = a.flatten(0, -3)  # bmm's (batch, m, m)
    z = a3.transpose(1, 2) / a3.sum(1).amax(1)[:, None, None]
    for _ in range(iterations):
        az = torch.bmm(a3, z)
        inner = torch.baddbmm(eye, az, 7 * eye - az, beta=15, alpha=-1)  # 15I - AZ (7I - AZ)
        z = torch.bmm(z, torch.baddbmm(eye, az, inner, beta=13 / 4, alpha=-1 / 4))
    return z.view(a.shape)


def nystrom_dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    landmarks: int,
    iterations: int,
    key_valid: torch.Tensor | None,
    global_init: bool = False,
) -> torch.Tensor:
    """The Nystrom approximation in float64 with its (Nq x Nk) attention matrix formed explicitly, then times V.

    Landmarks by an explicit (m x N) averaging matrix; key_valid bool (B, Nk) or None. global_init takes
    the pseudo-inverse's initial scale over the whole batch and every head (the paper's and HF's default).
    """
    q, k, v = q.double(), expand_kv_heads(k.double(), q.shape[1]), expand_kv_heads(v.double(), q.shape[1])
    q, k = q * q.shape[-1] ** -0.25, k * k.shape[-1] ** -0.25
    if key_valid is not None:
        k = k * key_valid[:, None, :, None]

    def averaging(n: int) -> torch.Tensor:  # (m, n): row i averages segment i
        member = segment_ids(n, landmarks, q.device)[None, :] == torch.arange(landmarks, device=q.device)[:, None]
        return member.double() / member.sum(-1, keepdim=True)

    q_land, k_land = averaging(q.shape[2]) @ q, averaging(k.shape[2]) @ k
    kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)
    kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)
    scores_3 = q_land @ k.transpose(-1, -2)
    if key_valid is not None:
        scores_3 = scores_3.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    kernel_3 = torch.softmax(scores_3, dim=-1)
    eye = torch.eye(landmarks, dtype=torch.float64, device=q.device)
    scale = kernel_2.sum(-2).amax() if global_init else kernel_2.sum(-2).amax(-1)[..., None, None]
    z = kernel_2.transpose(-1, -2) / scale
    for _ in range(iterations):
        z = 0.25 * z @ (13 * eye - kernel_2 @ z @ (15 * eye - kernel_2 @ z @ (7 * eye - kernel_2 @ z)))
    return (kernel_1 @ z @ kernel_3) @ v


class NystromAttention(Attention):
    """softmax(Q K~^T) pinv(softmax(Q~ K~^T)) (softmax(Q~ K^T) V) with segment-mean landmarks."""

    def __init__(self, problem: Problem, num_landmarks: int, pinv_iterations: int) -> None:
        super().__init__(problem)
        self.landmarks, self.iterations = num_landmarks, pinv_iterations
        self.exact = num_landmarks >= min(problem.q_len, problem.kv_len)
        self.compute_dtype = torch.float32 if problem.dtype in ("float16", "bfloat16") else problem.torch_dtype
        valid = problem.key_padding_mask()  # (B, Nk) or None
        self.register_buffer("key_valid", valid)
        self.register_buffer("key_keep", None if valid is None else valid[:, None, :, None].to(self.compute_dtype))
        self.register_buffer("key_mask", None if valid is None else valid[:, None, None, :])  # (B, 1, 1, Nk)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out_dtype = q.dtype
        q, k, v = (x.to(self.compute_dtype) for x in (q, k, v))
        gqa = q.shape[1] != k.shape[1]
        if self.exact:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.key_mask, enable_gqa=gqa).to(out_dtype)
        batch, kv_heads, _, head_dim = k.shape
        heads, m = q.shape[1], self.landmarks
        if self.key_keep is not None:
            k = k * self.key_keep
        q_land, k_land = segment_means(q, m), segment_means(k, m)  # (B, Hq, m, d), (B, Hkv, m, d)
        # kernel 2, (m x m) per head: the query heads of a group stacked on the row axis against their kv head
        q_land_rows = q_land.reshape(batch, kv_heads, -1, head_dim) * head_dim**-0.5
        kernel_2 = torch.softmax(q_land_rows @ k_land.transpose(-1, -2), dim=-1).view(batch, heads, m, m)
        # softmax(Q~ K^T) V is attention of the m landmark queries (a group's stacked) over the N keys, and
        # softmax(Q K~^T) times pinv(kernel 2) softmax(Q~ K^T) V attention of the N queries over the m landmark keys
        mixed = landmarks_over_keys(q_land.reshape(batch, kv_heads, -1, head_dim), k, v, self.key_mask, head_dim**-0.5)
        values = iterative_pinv(kernel_2, self.iterations) @ mixed.view(batch, heads, m, -1)  # (B, Hq, m, d)
        if gqa:
            k_land = k_land.repeat_interleave(heads // kv_heads, dim=1)
        return queries_over_landmarks(q, k_land, values, head_dim**-0.5).to(out_dtype)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return dense_attention(q, k, v, self.problem.allowed_mask())
        return nystrom_dense(q, k, v, self.landmarks, self.iterations, self.key_valid)


def _availability(problem: Problem) -> str | None:
    if problem.causal:
        return "every Nystrom landmark is the mean of a whole segment, future positions included: not causal"
    return None


def computed_flops(problem: Problem, hparams: dict) -> float:
    m, d = hparams["num_landmarks"], problem.head_dim
    if m >= min(problem.q_len, problem.kv_len):
        return problem.dense_flops()
    n_q, n_k = problem.q_len, problem.kv_len
    kernels = 2 * n_q * m * d + 2 * m * m * d + 4 * m * n_k * d  # kernel 1, kernel 2, kernel 3 and its product with V
    products = 2 * m * m * d + 2 * n_q * m * d  # pinv times (kernel 3 V), kernel 1 times that
    pinv = hparams["pinv_iterations"] * 4 * 2 * m**3
    return float(problem.batch * problem.q_heads * (kernels + products + pinv))


@register(
    family="low_rank",
    exact=False,
    time="N*m*d",
    memory="N*m",
    features=("padding", "gqa", "cross"),
    flops=computed_flops,
    availability=_availability,
    oracle_hparams={"num_landmarks": 5},
    suite_hparams={"num_landmarks": 32},
    decode="landmarks are segment means over the whole sequence: not causal, so no decode step",
)
def nystromformer(
    problem: Problem, *, num_landmarks: Annotated[int, AtLeast(1)] = 64, pinv_iterations: Annotated[int, AtLeast(0)] = 6
) -> Attention:
    """Nystromformer: segment-mean landmarks and an iterative pseudo-inverse approximate softmax in O(N*m)."""
    return NystromAttention(problem, num_landmarks, pinv_iterations)
