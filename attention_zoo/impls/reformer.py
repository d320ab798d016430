"""Reformer's LSH attention (Kitaev et al. 2020): shared-QK attention within hash buckets, sorted and chunked.

Shared QK: the keys are the queries, normalised, k_j = q_j / |q_j|; the k given to the call is
ignored (only q and v are used). Scores are q_i . k_j, without a 1/sqrt(d) (the paper's and HF's
convention: the keys have unit length). Then:
- Hashing, `n_hashes` rounds: angular LSH by random rotations fixed at build time from `seed`, per
  head and round, h(x) = argmax([x R; -x R]). The bucket count is f*f with f the even number nearest
  sqrt(N / bucket_size) (at least 2): two factor hashes of f buckets, b = b1 + f*b2 (HF's and trax's
  factorised hashing), so buckets hold bucket_size positions on average and hashing costs
  O(N*sqrt(N/c)*d) rather than O(N^2/c*d). Hashes are computed in the entry's compute dtype and argmax
  takes the first of tied maxima, so the float64 oracle, hashing the same values the same way, gets
  the same buckets.
- Sorting: the n_hashes*N (round, position) slots are sorted by (round, bucket, position), a total
  order with no ties.
- Chunks of `bucket_size` sorted slots (the last one padded) attend themselves and one chunk back; the
  first chunk looks back at the last (wrapping over rounds, as HF and reformer-pytorch do). Duplicates
  are not removed: a key reached k times weighs k times (reformer-pytorch's default, and HF's).
- A position does not attend to itself unless it has nothing else (self gets -1e5, the rest -1e9 when
  masked, as HF). Causal: keys after the query's position are masked. Padded keys are never attended;
  a query with no valid key at all outputs zeros.
- Each round's softmax is combined over rounds by its log-sum-exp: one softmax over everything the
  query reached. Scores, row maxima and weights are in base 2 (attention_zoo/base2.py: exp2 does not
  slow down on the masked scores, where exp does). Needs q_len == kv_len. Half precision computes in float32.
- The chunks and the rounds' combination run in `attention_zoo/impls/lsh_kernel.py`, one autograd Function
  with its backward written out; this module hashes, sorts and lays out where each sorted place reads from.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F

from attention_zoo.impls.lsh_kernel import Places, lsh_attention
from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast


def bucket_factors(seq_len: int, bucket_size: int) -> list[int]:
    """The two factor hashes' bucket counts: f, f with f the even number nearest sqrt(N / bucket_size), at least 2."""
    f = max(2, 2 * round(math.sqrt(seq_len / bucket_size) / 2))
    return [f, f]


def hash_buckets(q: torch.Tensor, rotations: torch.Tensor, factors: list[int]) -> torch.Tensor:
    """(B, H, N, d), rotations (H, d, n_hashes, sum(factors)/2) -> buckets (B, H, n_hashes, N) in [0, prod(factors))."""
    rotated = torch.einsum("bhnd,hdrk->bhrnk", q, rotations)
    buckets, start, product = 0, 0, 1
    for f in factors:
        part = rotated[..., start : start + f // 2]
        buckets = buckets + product * torch.cat([part, -part], dim=-1).argmax(-1)
        start, product = start + f // 2, product * f
    return buckets


def sorted_slots(buckets: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """(B, H, n_hashes, N) buckets -> (B, H, n_hashes*N): slot r*N + i at each sorted place, by (round, bucket, i)."""
    n_hashes, n = buckets.shape[-2:]
    rounds = torch.arange(n_hashes, device=buckets.device)[:, None]
    key = ((rounds * num_buckets + buckets) * n + torch.arange(n, device=buckets.device)).flatten(-2)
    return key.argsort(dim=-1)


def lsh_dense(
    q: torch.Tensor,
    v: torch.Tensor,
    order: torch.Tensor,
    chunk: int,
    scale: float,
    causal: bool,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """LSH attention in float64 as one softmax over every key a query reached, each weighed by how often.

    order (B, H, S): the slot (round*N + position) at each sorted place; key_valid bool (B, N). Keys are
    the normalised queries; self only when nothing else is allowed.
    """
    q, v = q.double(), v.double()
    n, places = q.shape[2], order.shape[-1]
    chunk_of = torch.arange(places, device=q.device) // chunk
    chunks = -(-places // chunk)
    window = (chunk_of[:, None] == chunk_of[None, :]).double() + (
        chunk_of[None, :] == (chunk_of[:, None] - 1) % chunks
    ).double()  # (S, S): 2 where one chunk is its own look-back
    item = F.one_hot(order % n, n).double()  # (B, H, S, N)
    counts = item.transpose(-1, -2) @ window @ item  # (B, H, N, N)
    allowed = (counts > 0) & key_valid[:, None, None, :]
    if causal:
        allowed &= torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    self_pair = torch.eye(n, dtype=torch.bool, device=q.device)
    others = allowed & ~self_pair
    only_self = ~others.any(-1, keepdim=True) & self_pair & key_valid[:, None, None, :]
    keys = F.normalize(q, dim=-1)
    return dense_attention(q, keys, v, others | only_self, scale, score_bias=counts.clamp_min(1).log())


def ignored(k: torch.Tensor) -> torch.Tensor:
    """0 as a function of k: added to the output, k's gradient is zeros (it has no effect), not missing."""
    return k[..., :0].sum()


class LSHAttention(Attention):
    """Shared-QK LSH attention: hash, sort, chunked attention with one chunk of look-back, combined over rounds."""

    def __init__(self, problem: Problem, n_hashes: int, bucket_size: int, seed: int) -> None:
        super().__init__(problem)
        self.n_hashes, self.chunk = n_hashes, bucket_size
        self.factors = bucket_factors(problem.q_len, bucket_size)
        self.num_buckets = math.prod(self.factors)
        self.compute_dtype = torch.float32 if problem.dtype in ("float16", "bfloat16") else problem.torch_dtype
        generator = torch.Generator().manual_seed(seed)
        shape = (problem.q_heads, problem.head_dim, n_hashes, sum(self.factors) // 2)
        rotations = torch.randn(shape, generator=generator, dtype=torch.float64)
        self.register_buffer("rotations", rotations.to(device=problem.device, dtype=self.compute_dtype))
        valid = problem.key_padding_mask()
        self.register_buffer("key_valid", valid)
        self.register_buffer("kv_head_of", torch.arange(problem.q_heads, device=problem.device) // problem.group_size)

    def sort(self, q: torch.Tensor) -> torch.Tensor:
        """(B, H, n_hashes*N) long: the sorted slots, hashed from q in the compute dtype (the oracle's too)."""
        with torch.no_grad():
            buckets = hash_buckets(q.detach().to(self.compute_dtype), self.rotations, self.factors)
            return sorted_slots(buckets, self.num_buckets)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out_dtype = q.dtype
        q, v = q.to(self.compute_dtype), v.to(self.compute_dtype)
        batch, heads, n, head_dim = q.shape
        order = self.sort(q)
        places, c = order.shape[-1], self.chunk
        chunks = -(-places // c)
        position = F.pad(order % n, (0, chunks * c - places), value=-1)  # (B, H, S'), -1 = a padding place
        # per sorted place (B*H*C chunks of c, each head's in order): its row of the flattened (B*H*N, d) q and
        # (B*Hkv*N, d) v, and its position
        head = torch.arange(batch * heads, device=q.device).view(batch, heads, 1)
        kv_head = head // heads * v.shape[1] + self.kv_head_of[None, :, None]
        q_rows = (head * n + position.clamp_min(0)).view(-1, c)
        v_rows = (kv_head * n + position.clamp_min(0)).view(-1, c)
        # whether each place is a real key: None when all are (no padding place, no padded key)
        key_ok = None
        if self.key_valid is not None or places < chunks * c:
            key_ok = position >= 0
            if self.key_valid is not None:
                key_ok &= self.key_valid[:, None, :].expand(-1, heads, -1).gather(2, position.clamp_min(0))
            key_ok = key_ok.view(-1, c)
        # each position's sorted place in every round: (B*H*N, n_hashes)
        undo = torch.empty_like(order).scatter_(-1, order, torch.arange(places, device=order.device).expand_as(order))
        place_of = (head * (chunks * c) + undo).view(batch * heads, self.n_hashes, n).transpose(1, 2).flatten(0, 1)
        where = Places(q_rows, v_rows, position.view(-1, c), key_ok, chunks, place_of, n)
        result = lsh_attention(q.reshape(-1, head_dim), v.reshape(-1, head_dim), k, where, self.problem.causal)
        return result.view(batch, heads, n, head_dim).to(out_dtype)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax over the keys (normalised queries; k is ignored) each query reached in its buckets' chunks."""
        valid = self.key_valid
        valid = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device) if valid is None else valid
        return lsh_dense(q, v, self.sort(q), self.chunk, 1.0, self.problem.causal, valid) + ignored(k)


def _availability(problem: Problem) -> str | None:
    if problem.q_len != problem.kv_len:
        return (
            "shared-QK LSH attention hashes and sorts one sequence that is both queries and keys: needs q_len == kv_len"
        )
    return None


def computed_flops(problem: Problem, hparams: dict) -> float:
    n, d, c, n_hashes = problem.q_len, problem.head_dim, hparams["bucket_size"], hparams["n_hashes"]
    hashing = 2 * n * d * sum(bucket_factors(n, c)) // 2 * n_hashes
    places = -(-n_hashes * n // c) * c
    attention = 4 * places * 2 * c * d  # each sorted place scores 2c keys and sums 2c values
    return float(problem.batch * problem.q_heads * (hashing + attention))


@register(
    family="sparse",
    exact=False,
    time="n_h*N*(c*d+log(N))",
    memory="n_h*N*c",
    features=("causal", "padding", "gqa"),
    flops=computed_flops,
    availability=_availability,
    oracle_hparams={"bucket_size": 4, "n_hashes": 2},
    suite_hparams={"bucket_size": 32},
    decode="shared-QK buckets are sorted over the whole sequence each call (q_len == kv_len): no incremental step",
)
def reformer_lsh(
    problem: Problem,
    *,
    n_hashes: Annotated[int, AtLeast(1)] = 2,
    bucket_size: Annotated[int, AtLeast(1)] = 64,
    seed: int = 0,
) -> Attention:
    """Reformer LSH attention: shared QK (k ignored), n_hashes rotation hashes, sorted chunks with one look-back."""
    return LSHAttention(problem, n_hashes, bucket_size, seed)
