"""HF transformers' Reformer LSH and lucidrains' reformer-pytorch beside our reformer_lsh (impls/reformer.py)."""

from __future__ import annotations

import importlib
import math

import torch

from attention_zoo.impls import reformer
from attention_zoo.interface import Attention
from attention_zoo.peers.common import (
    PEER_DECODE,
    Columns,
    Positive,
    all_keys_valid,
    positive_ints,
    self_attention_only,
    split_heads,
    tokens,
)
from attention_zoo.problem import Problem
from attention_zoo.registry import register


def _seeded_randn(seed: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """torch.randn(shape) right after torch.manual_seed(seed), without touching the global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.randn(shape, dtype=dtype, device=device)


class PeerHFReformer(Attention):
    """transformers' LSHSelfAttention forward, its query_key and value projections replaced by column pickers.

    Shared QK as ours (the given k is ignored), n_hashes, chunk length = bucket_size, one chunk before
    and none after, and num_buckets set to our two factors [f, f] (its factorised hashing, the same
    buckets as ours for the same rotations). Its rotations are drawn at every call by torch.randn after
    torch.manual_seed(seed) (its hash_seed, which reseeds the global generator), so the pattern is the
    same at every call but not the one our entry draws. Keys: x / sqrt(mean(x^2) + 1e-6) / sqrt(d),
    our unit keys up to that epsilon. Same self (-1e5) and mask (-1e9) values, same look-back wrap.
    Causal through is_decoder. A query that reaches only itself (causal: the first positions) is
    normalised by exp(-1e5 - logsumexp) in float32, off by up to 1e-2 (ours normalises from the row
    max). Needs N a multiple of bucket_size; no GQA, and no padding here (it
    hashes padded positions into an extra last bucket, unlike ours).
    """

    def __init__(self, problem: Problem, n_hashes: int, bucket_size: int, seed: int) -> None:
        super().__init__(problem)
        self.n_hashes, self.chunk, self.seed = n_hashes, bucket_size, seed
        self.factors = reformer.bucket_factors(problem.q_len, bucket_size)
        width = problem.q_heads * problem.head_dim
        config = importlib.import_module("transformers").ReformerConfig(
            attention_head_size=problem.head_dim,
            num_attention_heads=problem.q_heads,
            hidden_size=width,
            num_hashes=n_hashes,
            num_buckets=self.factors,
            lsh_attn_chunk_length=bucket_size,
            lsh_num_chunks_before=1,
            lsh_num_chunks_after=0,
            hash_seed=seed,
            is_decoder=problem.causal,
            lsh_attention_probs_dropout_prob=0.0,
            max_position_embeddings=max(4096, problem.q_len),
            attn_layers=["lsh"],
        )
        module = importlib.import_module("transformers.models.reformer.modeling_reformer")
        layer = module.LSHSelfAttention(config, layer_idx=0).eval()
        layer.query_key, layer.value = Columns(0, width), Columns(width, 2 * width)
        self.layer = layer.requires_grad_(False)  # its own parameters, if any, fixed: gradients reach q, k, v only

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = self.layer(tokens(q, v)).hidden_states
        return split_heads(out, q.shape[1]) + reformer.ignored(k)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.problem
        rotations = _seeded_randn(
            self.seed, (p.q_heads, p.head_dim, self.n_hashes, sum(self.factors) // 2), torch.float32, q.device
        )
        buckets = reformer.hash_buckets(q.detach().float(), rotations, self.factors)
        order = reformer.sorted_slots(buckets, math.prod(self.factors))
        out = reformer.lsh_dense(q, v, order, self.chunk, 1.0, p.causal, all_keys_valid(p))
        return out + reformer.ignored(k)


def _lsh_availability(package: str, module: str, multiple: int):
    def availability(problem: Problem, hparams: dict) -> str | None:
        c = hparams["bucket_size"]
        if positive_ints(c) and problem.q_len % (multiple * c):
            factor = f"{multiple}*" if multiple > 1 else ""
            return f"{package} needs N a multiple of {factor}bucket_size={factor}{c}"
        return self_attention_only(problem, package, module)

    return availability


@register(
    decode=PEER_DECODE,
    family="sparse",
    exact=False,
    time="n_h*N*(c*d+log(N))",
    memory="n_h*N*c",
    features=("causal",),
    flops=reformer.computed_flops,
    availability=_lsh_availability("transformers", "transformers", 1),
    oracle_hparams={"bucket_size": 7, "n_hashes": 2},
)
def peer_hf_reformer(
    problem: Problem, *, n_hashes: Positive = 2, bucket_size: Positive = 64, seed: int = 0
) -> Attention:
    """HF transformers' Reformer LSHSelfAttention core (shared QK, factorised buckets as ours, its rotations)."""
    return PeerHFReformer(problem, n_hashes, bucket_size, seed)


class PeerReformerPytorch(Attention):
    """lucidrains' reformer_pytorch.LSHAttention on (B*H, N, d), the attention core of its LSHSelfAttention.

    bucket_size and n_hashes as ours; its defaults otherwise: duplicates kept and attention across
    buckets allowed (as ours), one rotation shared by every head. It differs: one hash of N/bucket_size
    buckets (not our two factors; the factor list [N/bucket_size] in our dense form), fresh rotations
    from the global generator at every call (seeded here from `seed` in a forked generator, so the
    same rotations at every call), and scores scaled by d^-1/2 on top of the unit keys. Its self value
    is -5e4, normalised through its float32 logsumexp (a self-only row is off by up to 1e-2, as HF's).
    Causal as ours. Needs N a multiple of 2*bucket_size; no GQA, cross, or padding here.
    """

    def __init__(self, problem: Problem, n_hashes: int, bucket_size: int, seed: int) -> None:
        super().__init__(problem)
        self.n_hashes, self.chunk, self.seed = n_hashes, bucket_size, seed
        layer = importlib.import_module("reformer_pytorch.reformer_pytorch").LSHAttention(
            bucket_size=bucket_size, n_hashes=n_hashes, causal=problem.causal, dropout=0.0
        )
        self.layer = layer.eval().requires_grad_(False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads, n, head_dim = q.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            out, _, _ = self.layer(q.reshape(batch * heads, n, head_dim), v.reshape(batch * heads, n, head_dim))
        return out.view(batch, heads, n, head_dim) + reformer.ignored(k)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.problem
        num_buckets = p.q_len // self.chunk
        shared = _seeded_randn(self.seed, (1, p.head_dim, self.n_hashes, num_buckets // 2), torch.float32, q.device)
        buckets = reformer.hash_buckets(q.detach().float(), shared.expand(p.q_heads, -1, -1, -1), [num_buckets])
        order = reformer.sorted_slots(buckets, num_buckets)
        out = reformer.lsh_dense(q, v, order, self.chunk, p.head_dim**-0.5, p.causal, all_keys_valid(p))
        return out + reformer.ignored(k)


def _reformer_pytorch_flops(problem: Problem, hparams: dict) -> float:
    n, d, c, n_hashes = problem.q_len, problem.head_dim, hparams["bucket_size"], hparams["n_hashes"]
    hashing = 2 * n * d * (n // c) // 2 * n_hashes
    return float(problem.batch * problem.q_heads * (hashing + 4 * n_hashes * n * 2 * c * d))


@register(
    decode=PEER_DECODE,
    family="sparse",
    exact=False,
    time="N^2*d/c",  # one hash of N/c buckets: the rotation costs N*(N/c)*d, beside N*c*d of attention
    memory="n_h*N*c",
    features=("causal",),
    flops=_reformer_pytorch_flops,
    availability=_lsh_availability("reformer-pytorch", "reformer_pytorch", 2),
    oracle_hparams={"bucket_size": 5, "n_hashes": 2},
)
def peer_reformer_pytorch(
    problem: Problem, *, n_hashes: Positive = 2, bucket_size: Positive = 64, seed: int = 0
) -> Attention:
    """lucidrains' reformer-pytorch LSHAttention (shared QK, one hash of N/bucket_size buckets, its defaults)."""
    return PeerReformerPytorch(problem, n_hashes, bucket_size, seed)
