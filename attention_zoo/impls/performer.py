"""Performer's FAVOR+ (Choromanski et al. 2021): softmax attention estimated with positive random features.

phi(x) = exp(w_i^T x - |x|^2 / 2) / sqrt(m), i = 1..m, with x = q * d^-1/4 (likewise k), makes
phi(q)^T phi(k) an unbiased estimate of exp(q^T k / sqrt(d)). Then
    out = phi(Q) (phi(K)^T V) / (phi(Q) (phi(K)^T 1))
costs O(N*m*d) instead of O(N^2*d). Conventions:
- w_i are orthogonal random features: d x d blocks from the QR of Gaussian matrices (signs fixed so
  each block is Haar-distributed), rows rescaled by chi(d)-distributed norms, as in the paper and
  performer-pytorch. One feature matrix is shared by every head.
- Stabiliser: with exponents a_i = w_i^T x_q - |x_q|^2/2 and b_i = w_i^T x_k - |x_k|^2/2, the keys
  subtract c_i, the max of b_i over the (sequence, head)'s valid keys, one per feature (found online
  over key chunks: the summary so far is rescaled by exp(c_old - c_new) when it grows; causal chunks
  use the max over the keys up to their own, the only keys they see); the queries add
  c_i (so each product exp(a_i + b_i) is unchanged) and subtract the max over features of the result,
  one per query row (|x_q|^2/2, a row constant, drops out with it). The row constant cancels in the
  normalisation and the c_i cancel in the product, so all are excluded from the gradient. Every
  feature is then at most 1, each key feature column reaches 1, and each row's largest query feature
  is 1 where its key column sums to at least 1, so the denominator is >= 1 (non-causal): large-norm
  inputs neither overflow nor underflow to 0/0, where one constant per head leaves rows whose large
  features meet only tiny key features (logits of 1e4 in float32). The constant 1/sqrt(m) cancels
  likewise and is dropped from the fast path.
- Chunks: features exist `chunk` positions at a time (all heads; by default CHUNK_BYTES of them), so the
  (N, m) feature maps of the whole sequence never do: keys' features go into S = sum phi(k) [v, 1]^T
  (m x (d+1)) chunk by chunk, then each query chunk's features meet S, each chunk in cache.
- Causal (bottom-right): prefix sums over key chunks of `causal_chunk` positions; the running
  S = sum phi(k) [v, 1]^T (m x (d+1)) is carried across chunks, and inside a chunk the masked c x c
  quadratic form is used. Forward memory is O(N*m + m*d); per-position m x d states never exist
  (autograd does keep the one S per chunk it multiplies with, O(N/c * m*d), for the backward pass).
- Exponents are kept in base 2 (attention_zoo/base2.py): log2(e) is folded into the projection and
  the norm term, so each feature is one exp2; the stabilisers are base-2 exponents too.
- Padded keys get zero features (exponent -inf), so they add nothing to either sum.
- Half-precision inputs are computed in float32: the features span many orders of magnitude.
- dense_reference works in log space (log A = logsumexp over features of log phi(q) + log phi(k)),
  so the float64 definition stays finite where exp of either exponent alone would not.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch

from attention_zoo.base2 import LN_2, LOG2_E
from attention_zoo.decode import RecurrentState, grouped_queries, new_token_mask
from attention_zoo.interface import Attention, builds_graph
from attention_zoo.problem import Problem
from attention_zoo.reference import expand_kv_heads
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast

# bytes of the features that exist at once on the non-causal path (all heads) when `chunk` is None: the tile
# sweep's best, chunk=256 at 8 heads of m=256 features (fp32). In bytes, so that fewer heads or features take
# longer chunks of the same size in cache: at the regression suite's 4 heads of 32 features, 256 positions
# a chunk made the forward 7-15% slower than one pass at N = 512-2048 (loop overhead), 4096 positions 2-10%
# faster than it
CHUNK_BYTES = 256 * 8 * 256 * 4


def orthogonal_random_features(num_features: int, head_dim: int, generator: torch.Generator) -> torch.Tensor:
    """(m, d) float64: stacked orthogonal d x d blocks, rows rescaled to chi(d)-distributed norms."""
    blocks = []
    for _ in range(math.ceil(num_features / head_dim)):
        q, r = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=generator, dtype=torch.float64))
        blocks.append((q * torch.sign(torch.diagonal(r))).T)  # sign fix: Haar-uniform rows
    directions = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, head_dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return directions * norms[:, None]


class PerformerAttention(Attention):
    """FAVOR+ linear attention with positive orthogonal random features, in cache-sized chunks of the sequence."""

    def __init__(
        self, problem: Problem, num_features: int, redraw: bool, seed: int, causal_chunk: int, chunk: int | None
    ) -> None:
        super().__init__(problem)
        self.num_features, self.redraw = num_features, redraw
        self.compute_dtype = problem.compute_dtype
        features_bytes = problem.batch * problem.q_heads * num_features * self.compute_dtype.itemsize
        self.causal_chunk, self.chunk = causal_chunk, chunk or max(1, CHUNK_BYTES // features_bytes)
        self.generator = torch.Generator().manual_seed(seed)
        # the features of the latest call (drawn here; redrawn per call when redraw is on)
        self.register_buffer("features", self._draw())
        mask = problem.key_padding_mask()  # (B, Nk) or None
        # additive: 0 for a valid key, -inf for padding (exp(-inf) = 0: padded keys add nothing, however large)
        self.register_buffer(
            "key_bias",
            None
            if mask is None
            else torch.zeros(mask.shape, dtype=self.compute_dtype, device=mask.device).masked_fill(~mask, -math.inf),
        )
        causal = min(causal_chunk, problem.q_len)
        self.register_buffer(
            "chunk_causal", torch.ones(causal, causal, dtype=self.compute_dtype, device=problem.device).tril_()
        )

    def _draw(self) -> torch.Tensor:
        features = orthogonal_random_features(self.num_features, self.problem.head_dim, self.generator)
        return features.to(device=self.problem.device, dtype=self.compute_dtype)

    def _projection(self, head_dim: int) -> torch.Tensor:
        """(d, m): the features with x = q * d^-1/4 and the change to base-2 exponents folded in."""
        return self.features.T * (head_dim**-0.25 * LOG2_E)

    def _key_exponents(self, k: torch.Tensor, start: int | None, w: torch.Tensor) -> torch.Tensor:
        """log2(e) * b_i = log2(e) * (w_i^T x_k - |x_k|^2/2) (B, Hkv, c, m) of key chunk k (B, Hkv, c, d) from
        position `start`, -inf for padding (start None: keys of a decode step, unpadded), before any
        stabiliser; w from _projection."""
        norms = k.square().sum(-1, keepdim=True).mul_(-LOG2_E / (2 * k.shape[-1] ** 0.5))  # (B, Hkv, c, 1)
        # matmul's result is a tensor of its own, not a view: the in-place steps on it (here and in the
        # callers) cost the backward nothing, where on a view each would add a copy of the whole base (CopySlices)
        exponent = (k @ w).add_(norms)
        if self.key_bias is not None and start is not None:
            exponent = exponent.add_(self.key_bias[:, None, start : start + k.shape[2], None])
        return exponent

    def _query_exponents(self, q: torch.Tensor, w: torch.Tensor, k_max: torch.Tensor) -> torch.Tensor:
        """Stabilised base-2 exponents of phi(q) (B, Hq, c, m) of a query chunk q (B, Hq, c, d).

        The keys' constants c_i (k_max, per kv head) are added back and each row's max is subtracted; the
        row's own -|x|^2/2 is a row constant, so it cancels against that max and is left out.
        """
        group = q.shape[1] // k_max.shape[1]
        exponent = (q @ w).add_(k_max if group == 1 else k_max.repeat_interleave(group, dim=1))  # (B, Hq, c, m)
        return exponent.sub_(exponent.detach().amax(-1, keepdim=True))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.redraw:
            self.features = self._draw()
        out_dtype = q.dtype
        q, k, v = (x.to(self.compute_dtype) for x in (q, k, v))
        batch, kv_heads, _, head_dim = k.shape
        group, q_len = q.shape[1] // kv_heads, q.shape[2]
        w = self._projection(head_dim)
        causal = self._causal if self.problem.causal else self._non_causal
        out = causal(q, k, v, w)  # (B, Hkv, G, Nq, d)
        return out.reshape(batch, kv_heads * group, q_len, head_dim).to(out_dtype)

    def _non_causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """S = phi(K)^T V and z = phi(K)^T 1 over key chunks with an online max per feature, then each query
        chunk's phi(Q) [S, z] normalised while it is in cache.

        Chunks are torch.split pieces, not slices: a slice's backward fills a zero tensor as large as
        the whole input, once per chunk (quadratic in N); split's joins the chunks' gradients once.
        """
        batch, kv_heads = k.shape[:2]
        state, k_max = None, None  # (B, Hkv, m, d+1): [S, z]; (B, Hkv, 1, m), the max of b_i over the keys so far
        graph = builds_graph(q, k, v)
        start = 0
        for k_chunk, v_chunk in zip(k.split(self.chunk, 2), v.split(self.chunk, 2), strict=True):
            exponent = self._key_exponents(k_chunk, start, w)
            start += k_chunk.shape[2]
            chunk_max = exponent.detach().amax(-2, keepdim=True)
            new_max = chunk_max if k_max is None else torch.maximum(k_max, chunk_max)
            exponent = exponent.sub_(new_max)
            summary = _KeySummary.apply(exponent, v_chunk)[0] if graph else _key_summary(exponent.exp2_(), v_chunk)
            state = summary if k_max is None else state.mul_((k_max - new_max).exp2_().transpose(-1, -2)).add_(summary)
            k_max = new_max
        group = q.shape[1] // kv_heads
        exponents = (self._query_exponents(q_chunk, w, k_max) for q_chunk in q.split(self.chunk, 2))
        if graph:
            chunks = [_QueryReadout.apply(exponent, state)[0] for exponent in exponents]
        else:  # no graph to build: the same steps without an autograd node
            chunks = [_readout(exponent.exp2_(), state)[0] for exponent in exponents]
        return torch.cat([c.view(batch, kv_heads, group, -1, c.shape[-1]) for c in chunks], dim=3)

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Prefix sums over chunks of `causal_chunk` positions; key offset+i sits at query i (bottom-right)."""
        batch, kv_heads, kv_len = k.shape[:3]
        v_ones = torch.cat([v, v.new_ones(batch, kv_heads, kv_len, 1)], dim=-1)  # numerator and denominator at once
        group, q_len, size = q.shape[1] // kv_heads, q.shape[2], self.causal_chunk
        offset = kv_len - q_len
        # keys before the first query's position are seen by every query: they start the state
        before = [min(size, offset - s) for s in range(0, offset, size)]
        sizes = [*before, *(min(size, q_len - s) for s in range(0, q_len, size))]
        k_chunks, v_chunks = k.split(sizes, 2), v_ones.split(sizes, 2)
        q_chunks = [None] * len(before) + list(q.split(size, 2))  # None: a chunk of keys before every query
        state = v_ones.new_zeros(batch, kv_heads, w.shape[-1], v_ones.shape[-1])
        k_max = v_ones.new_full((batch, kv_heads, 1, w.shape[-1]), -math.inf)
        chunks, start = [], 0
        for k_chunk, v_chunk, q_chunk in zip(k_chunks, v_chunks, q_chunks, strict=True):
            exponent = self._key_exponents(k_chunk, start, w)
            start += k_chunk.shape[2]
            new_max = torch.maximum(k_max, exponent.detach().amax(-2, keepdim=True))
            # -inf - -inf before any valid key: a state of zeros stays zero whatever its factor
            state = state * (k_max - new_max).nan_to_num_(0.0).exp2_().transpose(-1, -2)
            k_max = new_max
            phi_k = exponent.sub_(new_max).exp2_()
            if q_chunk is not None:
                c = q_chunk.shape[2]
                phi_q = self._query_exponents(q_chunk, w, new_max).exp2_()  # in place before the view (see above)
                phi_q = phi_q.view(batch, kv_heads, group, c, -1)
                within = (phi_q @ phi_k.transpose(-1, -2).unsqueeze(2)) * self.chunk_causal[:c, :c]  # (B, Hkv, G, c, c)
                chunks.append(_normalised(phi_q @ state.unsqueeze(2) + within @ v_chunk.unsqueeze(2)))
            state = state + phi_k.transpose(-1, -2) @ v_chunk
        return torch.cat(chunks, dim=3)

    def decode_state(self, k: torch.Tensor, v: torch.Tensor) -> RecurrentState:
        """The recurrent state S = sum_j phi(k_j) [v_j, 1]^T (B, Hkv, m, d+1) of the context, features
        stabilised by their max exponent c over it (kept beside S): fixed in L. Features are never redrawn here."""
        k, v = k.to(self.compute_dtype), v.to(self.compute_dtype)
        exponents = self._key_exponents(k, None, self._projection(k.shape[-1]))
        stabiliser = exponents.amax(-2, keepdim=True)  # (B, Hkv, 1, m)
        v_ones = torch.cat([v, v.new_ones(*v.shape[:3], 1)], dim=-1)
        return RecurrentState(exponents.sub_(stabiliser).exp2_().transpose(-1, -2) @ v_ones, k.shape[2], stabiliser)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: RecurrentState):
        """FAVOR+'s recurrent form: the new keys' features join S (rescaled where they raise a feature's max
        exponent, as an online softmax rescales), each new query reads S plus the new keys up to its own."""
        compute, steps, head_dim, out_dtype = self.compute_dtype, q.shape[2], q.shape[3], q.dtype
        q, k, v = q.to(compute), k.to(compute), v.to(compute)
        w = self._projection(head_dim)
        exponents = self._key_exponents(k, None, w)  # (B, Hkv, T, m)
        stabiliser = torch.maximum(state.stabiliser, exponents.amax(-2, keepdim=True))
        sums = state.sums * (state.stabiliser - stabiliser).exp2_().transpose(-1, -2)  # (B, Hkv, m, d+1)
        phi_k = exponents.sub_(stabiliser).exp2_()
        q_exponent = grouped_queries(q @ w, k.shape[1]).add_(stabiliser)
        phi_q = q_exponent.sub_(q_exponent.amax(-1, keepdim=True)).exp2_()  # (B, Hkv, G*T, m)
        v_ones = torch.cat([v, v.new_ones(*v.shape[:3], 1)], dim=-1)
        mask = new_token_mask(steps, q.device).repeat(q.shape[1] // k.shape[1], 1)
        out = _normalised((phi_q @ sums).add_((phi_q @ phi_k.transpose(-1, -2)).mul_(mask) @ v_ones))
        sums = sums + phi_k.transpose(-1, -2) @ v_ones
        return out.reshape(q.shape).to(out_dtype), RecurrentState(sums, state.position + steps, stabiliser)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A = phi(Q) phi(K)^T in float64, unstabilised, masked; out = A V / A 1 with the last call's features.

        Computed from log A, as softmax(log A) = A / A 1: exact where A's entries under- or overflow.
        """
        q, k, v = q.double(), k.double(), v.double()
        x_scale = q.shape[-1] ** -0.25
        w = self.features.double()

        def log_phi(x: torch.Tensor) -> torch.Tensor:  # (B, H, N, m); the -log sqrt(m) would cancel
            x = x * x_scale
            return x @ w.T - x.square().sum(-1, keepdim=True) / 2

        log_phi_k = expand_kv_heads(log_phi(k), q.shape[1])
        log_kernel = torch.logsumexp(log_phi(q)[..., :, None, :] + log_phi_k[..., None, :, :], dim=-1)
        log_kernel = log_kernel.masked_fill(~self.problem.allowed_mask(), float("-inf"))  # (B, Hq, Nq, Nk)
        return torch.softmax(log_kernel, dim=-1) @ expand_kv_heads(v, q.shape[1])


class _KeySummary(torch.autograd.Function):
    """phi = exp2(exponent) of a key chunk (B, Hkv, c, m), written over the exponent, and its summary
    [phi^T V, phi^T 1] (B, Hkv, m, e+1). Returns (summary, phi).

    A d-wide product and a row sum, not one product with [V, 1]: no (N, d+1) copy of V, and a d-wide GEMM
    runs at the full rate where a d+1-wide one does not. The backward is one GEMM and one pass:
    d exponent = ln 2 * phi * (V dS^T + dz), where autograd's exp2 and sum took three passes and two
    (c, m) tensors more.
    """

    @staticmethod
    def forward(ctx, exponent, v):
        phi = exponent.exp2_()
        ctx.mark_dirty(exponent)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(phi, v)
        return _key_summary(phi, v), phi

    @staticmethod
    def backward(ctx, grad_summary, _grad_phi):
        if grad_summary is None:  # no gradient reached the summary (phi's own is never used)
            return None, None
        phi, v = ctx.saved_tensors
        e = v.shape[-1]
        grad_s, grad_z = grad_summary[..., :e], grad_summary[..., e:].transpose(-1, -2)  # (.., m, e), (.., 1, m)
        grad_v = phi @ grad_s
        flat = (v.flatten(0, 1), grad_s.transpose(-1, -2).flatten(0, 1))
        grad_exponent = torch.baddbmm(grad_z.flatten(0, 1), *flat, beta=LN_2, alpha=LN_2).view_as(phi).mul_(phi)
        return grad_exponent, grad_v


class _QueryReadout(torch.autograd.Function):
    """phi = exp2(exponent) of a query chunk (B, Hq, c, m), written over the exponent, read against the state
    [S, z] (B, Hkv, m, e+1), a group's heads stacked: out = phi S / phi z (B, Hkv, G*c, e). Returns (out, phi).

    Backward, with gn = g / den, gd = -(g . out) / den and g' = [gn, gd]: d state = phi^T g',
    d exponent = ln 2 * phi * (g' state^T): one GEMM each and one pass, where autograd's exp2, slice and
    division took several passes over (c, m) and (c, d+1) tensors.
    """

    @staticmethod
    def forward(ctx, exponent, state):
        phi = exponent.exp2_()
        ctx.mark_dirty(exponent)
        ctx.set_materialize_grads(False)
        out, den = _readout(phi, state)
        ctx.save_for_backward(phi, state, out, den)
        return out, phi

    @staticmethod
    def backward(ctx, grad_out, _grad_phi):
        if grad_out is None:  # no gradient reached this chunk's output (phi's own is never used)
            return None, None
        phi, state, out, den = ctx.saved_tensors
        stacked = phi.view(*state.shape[:2], -1, phi.shape[-1])
        grad_ext = torch.cat([grad_out, (grad_out * out).sum(-1, keepdim=True).neg_()], dim=-1).div_(den)
        grad_state = stacked.transpose(-1, -2) @ grad_ext
        grad_exponent = (grad_ext.mul_(LN_2) @ state.transpose(-1, -2)).mul_(stacked)
        return grad_exponent.view_as(phi), grad_state


def _key_summary(phi: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[phi^T V, phi^T 1] (B, Hkv, m, e+1) of key features phi (B, Hkv, c, m) and values (B, Hkv, c, e)."""
    return torch.cat([phi.transpose(-1, -2) @ v, phi.sum(-2)[..., None]], dim=-1)


def _readout(phi: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Query features phi (B, Hq, c, m) against [S, z] (B, Hkv, m, e+1), a group's heads stacked: phi S / phi z
    (B, Hkv, G*c, e), and the denominator phi z (B, Hkv, G*c, 1)."""
    numerator_denominator = phi.view(*state.shape[:2], -1, phi.shape[-1]) @ state
    return _normalised(numerator_denominator), numerator_denominator[..., -1:]


def _normalised(numerator_denominator: torch.Tensor) -> torch.Tensor:
    """(..., d+1) phi(Q) [S, z] -> (..., d): the numerator over its denominator."""
    return numerator_denominator[..., :-1] / numerator_denominator[..., -1:]


def _flops(problem: Problem, hparams: dict) -> float:
    m, d = hparams["num_features"], problem.head_dim
    q_rows, k_rows = problem.q_heads * problem.q_len, problem.kv_heads * problem.kv_len
    features = 2 * (q_rows + k_rows) * m * d
    sums = 2 * k_rows * m * (d + 1) + 2 * q_rows * m * (d + 1)  # phi(K)^T [V, 1] and phi(Q) times it
    within_chunks = 2 * q_rows * min(hparams["causal_chunk"], problem.q_len) * (m + d + 1) if problem.causal else 0
    return float(problem.batch * (features + sums + within_chunks))


@register(
    family="kernel",
    exact=False,
    time="N*m*d",
    memory="N*m",
    flops=_flops,
    oracle_hparams={"num_features": 32, "causal_chunk": 7, "chunk": 9},
    decode=True,
)
def performer(
    problem: Problem,
    *,
    num_features: Annotated[int, AtLeast(1)] = 256,
    redraw: bool = False,
    seed: int = 0,
    causal_chunk: Annotated[int, AtLeast(1)] = 128,
    chunk: Annotated[int | None, AtLeast(1)] = None,  # positions per chunk; None: CHUNK_BYTES of features
) -> Attention:
    """Performer FAVOR+: positive orthogonal random features, softmax kernel estimated in O(N*m*d)."""
    return PerformerAttention(problem, num_features, redraw, seed, causal_chunk, chunk)
