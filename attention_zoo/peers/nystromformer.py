"""HF transformers' Nystromformer and lucidrains' nystrom-attention beside our nystromformer (impls/)."""

from __future__ import annotations

import importlib

import torch

from attention_zoo.impls import nystromformer
from attention_zoo.interface import Attention
from attention_zoo.peers.common import (
    PEER_DECODE,
    Columns,
    NonNegative,
    Positive,
    positive_ints,
    self_attention_only,
    split_heads,
    tokens,
)
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import register


class PeerHFNystromformer(Attention):
    """transformers' NystromformerSelfAttention forward, its q/k/v projections replaced by column pickers.

    num_landmarks as ours, segment means by reshape (so N must be a multiple of num_landmarks),
    no depthwise convolution of V added (conv_kernel_size None) and the pseudo-inverse's initial scale
    per sequence and head, as ours (init_option other than its default "original", which takes one max
    over the batch and all heads); both set on the layer, as its config's validation refuses them.
    Its pinv runs 6 iterations, fixed. At num_landmarks == N it is exact softmax.
    Non-causal self-attention; no GQA, and no padding here (its mask only masks the third kernel: keys
    are not zeroed before their landmarks as the paper's code does).
    """

    def __init__(self, problem: Problem, num_landmarks: int) -> None:
        super().__init__(problem)
        self.landmarks = num_landmarks
        width = problem.q_heads * problem.head_dim
        config = importlib.import_module("transformers").NystromformerConfig(
            hidden_size=width,
            num_attention_heads=problem.q_heads,
            num_landmarks=num_landmarks,
            segment_means_seq_len=problem.q_len,
            attention_probs_dropout_prob=0.0,
        )
        module = importlib.import_module("transformers.models.nystromformer.modeling_nystromformer")
        layer = module.NystromformerSelfAttention(config).eval()
        # what conv_kernel_size=None and inv_coeff_init_option=True would set (its config validates both away)
        layer.conv_kernel_size, layer.init_option = None, "exact"
        del layer.conv
        layer.query, layer.key, layer.value = (
            Columns(0, width),
            Columns(width, 2 * width),
            Columns(2 * width, 3 * width),
        )
        self.layer = layer.requires_grad_(False)  # its own parameters, if any, fixed: gradients reach q, k, v only

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return split_heads(self.layer(tokens(q, k, v))[0], q.shape[1])

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.landmarks == self.problem.q_len:
            return dense_attention(q, k, v)
        return nystromformer.nystrom_dense(q, k, v, self.landmarks, HF_PINV_ITERATIONS, None)


HF_PINV_ITERATIONS = 6  # NystromformerSelfAttention.iterative_inv's n_iter, not configurable


def _landmark_availability(package: str, module: str):
    def availability(problem: Problem, hparams: dict) -> str | None:
        m = hparams["num_landmarks"]
        if problem.causal:
            return f"{package}'s Nystromformer landmarks mix whole segments: not causal"
        if positive_ints(m) and problem.q_len % m and package == "transformers":
            return f"HF's Nystromformer takes segment means by reshape: it needs N a multiple of num_landmarks={m}"
        if positive_ints(m) and problem.q_len % m:
            return (
                f"nystrom-attention pads N up to a multiple of num_landmarks={m} with zero tokens in front, which "
                "enter the first landmark's mean: not our segments"
            )
        return self_attention_only(problem, package, module)

    return availability


def _nystrom_flops(problem: Problem, hparams: dict) -> float:
    return nystromformer.computed_flops(problem, {"pinv_iterations": HF_PINV_ITERATIONS, **hparams})


@register(
    decode=PEER_DECODE,
    family="low_rank",
    exact=False,
    time="N*m*d",
    memory="N*m",
    features=(),
    flops=_nystrom_flops,
    availability=_landmark_availability("transformers", "transformers"),
    oracle_hparams={"num_landmarks": 7},
)
def peer_hf_nystromformer(problem: Problem, *, num_landmarks: Positive = 64) -> Attention:
    """HF transformers' Nystromformer self-attention core (no conv; per-head pinv initialisation as ours)."""
    return PeerHFNystromformer(problem, num_landmarks)


class PeerNystromAttention(Attention):
    """lucidrains' nystrom_attention.NystromAttention, its to_qkv and to_out replaced by identities.

    num_landmarks and pinv_iterations as ours, residual=False (no depthwise convolution of V), no
    dropout. It scales q by d^-1/2 (the same scores as our d^-1/4 on each side) and takes landmarks as
    segment sums over ceil(N/m) positions divided by that count (our means when N is a multiple of m;
    otherwise it pads zero tokens in front, unsupported here). Its pseudo-inverse starts from
    Z0 = A^T / (max column sum * max row sum) over the whole batch and every head: `global_init`.
    Self-attention on one input (B, N, 3*H*d), so no GQA or cross; padding through its masked means is
    not wired up; not causal.
    """

    def __init__(self, problem: Problem, num_landmarks: int, pinv_iterations: int) -> None:
        super().__init__(problem)
        self.landmarks, self.iterations = num_landmarks, pinv_iterations
        width = problem.q_heads * problem.head_dim
        layer = importlib.import_module("nystrom_attention").NystromAttention(
            dim=width,
            dim_head=problem.head_dim,
            heads=problem.q_heads,
            num_landmarks=num_landmarks,
            pinv_iterations=pinv_iterations,
            residual=False,
            dropout=0.0,
        )
        layer.to_qkv, layer.to_out = torch.nn.Identity(), torch.nn.Identity()
        self.layer = layer.eval().requires_grad_(False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return split_heads(self.layer(tokens(q, k, v)), q.shape[1])

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return nystromformer.nystrom_dense(q, k, v, self.landmarks, self.iterations, None, global_init=True)


@register(
    decode=PEER_DECODE,
    family="low_rank",
    exact=False,
    time="N*m*d",
    memory="N*m",
    features=(),
    flops=nystromformer.computed_flops,
    availability=_landmark_availability("nystrom-attention", "nystrom_attention"),
    oracle_hparams={"num_landmarks": 7},
)
def peer_nystrom_attention(
    problem: Problem, *, num_landmarks: Positive = 64, pinv_iterations: NonNegative = 6
) -> Attention:
    """lucidrains' nystrom-attention NystromAttention core (no residual conv); num_landmarks, pinv_iterations."""
    return PeerNystromAttention(problem, num_landmarks, pinv_iterations)
