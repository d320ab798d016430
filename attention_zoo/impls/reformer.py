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
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F

from attention_zoo.base2 import LOG2_E
from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast

SELF_SCORE = -1e5  # a position's score for itself: wins only over masked keys
MASKED_SCORE = -1e9
DEAD_BELOW = -1e8  # a log-sum-exp below this came from masked keys only
GROUP_PLACES = 4096  # sorted places per group of chunks (a group's gathered rows and scores stay in the cache)


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
        # per sorted chunk (B*H*C of them, each head's in order): the rows of the flattened (B*H*N, d) q and
        # (B*Hkv*N, d) values at its places, their positions and whether each is a real key
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
        position = position.view(-1, c)
        sq = q.reshape(-1, head_dim).index_select(0, q_rows.flatten()).view(-1, c, head_dim)  # (B*H*C, c, d)
        # keys: the sorted queries at unit length
        keys = F.normalize(sq, dim=-1)
        values = v.reshape(-1, head_dim).index_select(0, v_rows.flatten()).view(-1, c, head_dim)
        # a group of chunks at a time, so its scores and weights stay in the cache at any N; split once (one
        # autograd node: its backward concatenates, where a slice per group would zero-fill whole tensors)
        group = max(1, GROUP_PLACES // c)
        columns = [keys, values, position] if key_ok is None else [keys, values, position, key_ok]
        splits = [x.split(group) for x in columns]
        # a head's first chunk looks back at the head's last
        wraps = [x.view(batch * heads, chunks, *x.shape[1:])[:, -1] for x in columns]
        del keys, values  # (without a graph) freed as soon as the groups have been scored
        results = []
        for g, sq_piece in enumerate(sq.split(group)):
            group_pieces = [sq_piece]
            for split, wrap in zip(splits, wraps, strict=True):
                group_pieces += [split[g], _chunks_before(split, g, group, wrap, chunks)]
            results.append(self._chunks(*group_pieces))
        del sq, splits, wraps, group_pieces
        out, row_max, total = (torch.cat(part) for part in zip(*results, strict=True))
        del results
        # back to slot order: (B, H, n_hashes, N, ...)
        undo = torch.empty_like(order).scatter_(-1, order, torch.arange(places, device=order.device).expand_as(order))
        undo_rows = (head * (chunks * c) + undo).flatten()
        shape = (batch, heads, self.n_hashes, n)

        def slot_order(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch * heads * chunks * c, -1).index_select(0, undo_rows).view(*shape, -1)

        out, row_max, total = slot_order(out), slot_order(row_max)[..., 0], slot_order(total)[..., 0]
        best = row_max.amax(2, keepdim=True)  # (B, H, 1, N): each round weighs exp(its max - the best)
        round_weight = (row_max - best).exp2_()
        result = (out * round_weight[..., None]).sum(2) / (total * round_weight).sum(2)[..., None]
        if self.key_valid is not None:  # a query that reached masked keys only outputs zeros
            result = result * (best[:, :, 0] > DEAD_BELOW)[..., None]
        return result.to(out_dtype) + ignored(k)

    def _chunks(
        self,
        sq: torch.Tensor,
        keys: torch.Tensor,
        keys_before: torch.Tensor,
        values: torch.Tensor,
        values_before: torch.Tensor,
        position: torch.Tensor,
        position_before: torch.Tensor,
        key_ok: torch.Tensor | None = None,
        key_ok_before: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sorted chunks (G, c, d) against themselves and the chunks before them: the unnormalised output
        (G, c, d), each row's max score and its sum of exp(score - max) (G, c), the scores in base 2."""
        q_pos = position[:, :, None]
        sq = sq * LOG2_E  # scores in base 2 (attention_zoo/base2.py), and so their row max
        # a chunk's scores against itself and against the chunk before, apart: no (2c)-wide copy of the keys
        parts = [
            self._masked(sq @ keys.transpose(-1, -2), q_pos, position[:, None, :], key_ok),
            self._masked(sq @ keys_before.transpose(-1, -2), q_pos, position_before[:, None, :], key_ok_before),
        ]  # (G, c, c) each
        # one softmax over both, left unnormalised: exp(score - row max), its sum, and the row max are kept,
        # so the rounds combine by their log-sum-exp without exp(score - logsumexp) rounding a -1e5 self score
        row_max = torch.maximum(parts[0].amax(-1), parts[1].amax(-1)).detach()  # the result does not depend on it
        weights = [part.sub_(row_max[..., None]).exp2_() for part in parts]
        total = weights[0].sum(-1).add_(weights[1].sum(-1))
        out = (weights[0] @ values).add_(weights[1] @ values_before)
        return out, row_max, total

    def _masked(
        self, scores: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, key_ok: torch.Tensor | None
    ) -> torch.Tensor:
        """Scores (G, c, c) of queries at q_pos (G, c, 1) against keys at k_pos (G, 1, c), masked in place:
        self gets SELF_SCORE; a padding place, a padded key (key_ok (G, c) False; None: every key is real)
        and (causal) a later key MASKED_SCORE."""
        scores = scores.masked_fill_(q_pos == k_pos, SELF_SCORE)
        masked = None if key_ok is None else ~key_ok[:, None, :]
        if self.problem.causal:
            later = k_pos > q_pos
            masked = later if masked is None else masked | later
        return scores if masked is None else scores.masked_fill_(masked, MASKED_SCORE)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax over the keys (normalised queries; k is ignored) each query reached in its buckets' chunks."""
        valid = self.key_valid
        valid = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device) if valid is None else valid
        return lsh_dense(q, v, self.sort(q), self.chunk, 1.0, self.problem.causal, valid) + ignored(k)


def _chunks_before(split: tuple[torch.Tensor, ...], g: int, group: int, wraps: torch.Tensor, per_head: int):
    """The chunks before group g's chunks (split[g], chunks g*group ...): chunk i's is chunk i - 1 of its head,
    a head's first chunk's the head's last (wraps[head]). Built from this group, the last chunk of the group
    before and the wraps, a group at a time: no copy of the whole sequence's chunks exists."""
    piece, first = split[g], g * group
    parts, j = [], 0
    while j < piece.shape[0]:
        i = first + j
        if i % per_head == 0:
            parts.append(wraps[i // per_head][None])
            j += 1
            continue
        stop = min(piece.shape[0], j + per_head - i % per_head)  # up to the next head's first chunk
        parts.append(piece[j - 1 : stop - 1] if j else torch.cat([split[g - 1][-1:], piece[: stop - 1]]))
        j = stop
    return torch.cat(parts) if len(parts) > 1 else parts[0]


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
