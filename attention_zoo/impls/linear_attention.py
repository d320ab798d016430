"""Linear attention (Katharopoulos et al. 2020): softmax's exp(q^T k) replaced by phi(q)^T phi(k), phi = elu + 1.

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j))

costs O(N*d^2) instead of O(N^2*d): the sums over keys are one d x (d+1) state, shared by every query.
No 1/sqrt(d) scale (the paper has none; any constant would cancel in the normalisation). Conventions:
- Causal (bottom-right): query i sums keys j <= i + (Nk - Nq). Chunked prefix sums over `causal_chunk`
  positions: every chunk's state phi(K_c)^T [V_c, 1] at once, an exclusive cumulative sum over chunks
  (the keys before the first query's position are every chunk's initial state), and inside a chunk the
  masked c x c quadratic form. No Python loop over chunks; per-position d x d states never exist. The
  backward is written out (_CausalChunks): the same chunk products in reverse, nothing but them saved.
- Non-causal: the state is summed and the queries are applied ROW_CHUNK_BYTES of rows at a time, and the
  backward (_NonCausalRows) recomputes phi the same way, so the output and the three gradients are
  the only q-sized tensors (autograd's would be the features, the numerator and its gradients too).
- Padding: padded keys get phi = 0, so they add nothing to either sum. Key 0 is always real and every
  query sees it, so no denominator is zero.
- GQA: the query heads of a group are stacked on the query axis against their one key/value state.
- Cross-attention: non-causal, any Nq and Nk; causal, Nq <= Nk (the problem's rule).
- Half-precision inputs are computed in float32 (the sums run over N positions); the output is in the
  input dtype.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from attention_zoo.decode import RecurrentState, grouped_queries, new_token_mask
from attention_zoo.interface import Attention, builds_graph
from attention_zoo.padding import pad_rows
from attention_zoo.problem import Problem
from attention_zoo.reference import expand_kv_heads
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast

# the non-causal passes take this many bytes of rows (all heads) at a time. Measured at N = 1k / 4k /
# 16k (B 1, H 8, D 64, fp32, one thread, AMD EPYC): 256 KiB 4.6 / 18.3 / 86.0 ms, 1 MiB 5.4 / 16.9 / 80.5,
# 4 MiB 4.2 / 16.7 / 83.3, 16 MiB 7.6 / 31.6 / 105; 4.0 / 19.5 / 132 with whole q-sized temporaries
ROW_CHUNK_BYTES = 4 << 20


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1: positive, so every kernel value and normaliser is positive."""
    return F.elu(x).add_(1.0)  # in place: elu's backward reads its input, not its output


def linear_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """A = phi(Q) phi(K)^T in float64, masked to `allowed` (B, 1, Nq, Nk); out = A V / A 1."""
    q, k, v = q.double(), k.double(), v.double()
    kernel = elu_feature_map(q) @ expand_kv_heads(elu_feature_map(k), q.shape[1]).transpose(-1, -2)
    kernel = kernel * allowed
    return (kernel @ expand_kv_heads(v, q.shape[1])) / kernel.sum(-1, keepdim=True)


def prefix_sums_(x: torch.Tensor) -> torch.Tensor:
    """x's inclusive prefix sums over dim 1 (the chunks), in place.

    On the CPU one add per chunk over the rest: torch's cumsum over a dimension that is not the innermost
    runs a strided scalar loop, 5x slower here at 64 chunks of 64 x 64 states (9.8 ms against 1.8 ms).
    """
    if x.device.type != "cpu":
        return x.cumsum_(1)
    for i in range(1, x.shape[1]):
        x[:, i].add_(x[:, i - 1])
    return x


class _CausalChunks(torch.autograd.Function):
    """Causal linear attention over chunks, forward and a hand-written backward (the same chunked sums in reverse).

    Per chunk (batch dims flattened to one): qc (G*c, d) query features, the G heads of a group stacked on
    the rows; kc (c, d) key features; vc (c, e) values; s0 (d, e) and z0 (d,) the sums of the keys before
    the first chunk; mask (G*c, c) the causal mask of one chunk. Returns out (G*c, e):

        S_before = s0 + sum of kc^T vc over earlier chunks,  z_before likewise of kc^T 1
        A = (qc kc^T) * mask,   out = (qc S_before + A vc) / (qc z_before + A 1)

    Autograd through these steps would save and replay every elementwise pass; this backward needs only
    the chunk GEMMs: with gn = g / den and gd = -(g . out) / den,
        dA = (gn vc^T + gd) * mask,  dq = gn S_before^T + gd z_before^T + dA kc,
        dk = dA^T qc + vc S_after^T + z_after,  dv = A^T gn + kc S_after,
    S_after (z_after) being the sums of qc^T gn (qc^T gd) over later chunks, and ds0 (dz0) their total.
    """

    @staticmethod
    def forward(ctx, qc, kc, vc, s0, z0, mask):  # qc (X, nc, G*c, d); kc (X, nc, c, d); vc (X, nc, c, e)
        states = kc.transpose(-1, -2) @ vc  # (X, nc, d, e)
        norms = kc.sum(-2)  # (X, nc, d)
        s_before = prefix_sums_(torch.cat([s0[:, None], states[:, :-1]], dim=1))  # exclusive prefix sums + s0
        z_before = prefix_sums_(torch.cat([z0[:, None], norms[:, :-1]], dim=1))
        scores = (qc @ kc.transpose(-1, -2)).mul_(mask)  # A (X, nc, G*c, c)
        num = torch.matmul(qc, s_before).add_(scores @ vc)
        den = (qc @ z_before[..., None]).add_(scores.sum(-1, keepdim=True))  # (X, nc, G*c, 1)
        # a padding row of the last chunk has den 0 and num 0: out 0 there, and no 0/0 reaches the gradients
        den.clamp_min_(torch.finfo(den.dtype).tiny)
        out = num.div_(den)
        ctx.save_for_backward(qc, kc, vc, s_before, z_before, scores, den, out, mask)
        return out

    @staticmethod
    def backward(ctx, grad):
        qc, kc, vc, s_before, z_before, scores, den, out, mask = ctx.saved_tensors
        gn = grad / den
        gd = (grad * out).sum(-1, keepdim=True).div_(den).neg_()  # (X, nc, G*c, 1)
        d_scores = (gn @ vc.transpose(-1, -2)).add_(gd).mul_(mask)
        dq = (gn @ s_before.transpose(-1, -2)).add_(d_scores @ kc).addcmul_(gd, z_before[..., None, :])
        d_states = qc.transpose(-1, -2) @ gn  # (X, nc, d, e): what each chunk's S_before received
        d_norms = (qc * gd).sum(-2)  # (X, nc, d)
        s_total, z_total = d_states.sum(1), d_norms.sum(1)
        s_after = prefix_sums_(d_states.clone()).neg_().add_(s_total[:, None])  # sums over later chunks
        z_after = prefix_sums_(d_norms.clone()).neg_().add_(z_total[:, None])
        dk = (d_scores.transpose(-1, -2) @ qc).add_(vc @ s_after.transpose(-1, -2)).add_(z_after[..., None, :])
        dv = (scores.transpose(-1, -2) @ gn).add_(kc @ s_after)
        return dq, dk, dv, s_total, z_total, None


def _feature_slope_(phi: torch.Tensor) -> torch.Tensor:
    """d phi / dx of phi = elu + 1 from phi(x), in place: 1 where x > 0 (phi = x + 1 > 1), exp(x) = phi(x) <= 1
    otherwise, so min(phi, 1)."""
    return phi.clamp_max_(1.0)


class _NonCausalRows(torch.autograd.Function):
    """queries (B, Hkv, G*Nq, d) (a group's heads stacked on the rows), k, v (B, Hkv, Nk, d), key_keep
    (B, 1, Nk, 1) or None -> phi(Q) S / phi(Q) z with S = phi(K)^T V, z = phi(K)^T 1, `rows` rows at a time.

    Backward, with g the output's gradient, n = g / den and t = -(g . out) / den per row:
    dphi(Q) = n S^T + t z^T, dS = phi(Q)^T n, dz = phi(Q)^T t, dphi(K) = V dS^T + dz^T, dV = phi(K) dS.
    """

    @staticmethod
    def forward(ctx, queries, k, v, key_keep, rows: int):
        out, state, norm = _non_causal_rows(queries, k, v, key_keep, rows)
        ctx.save_for_backward(queries, k, v, key_keep, state, norm, out)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad):
        """Row chunks again, each step written into the gradient it belongs to: besides the three gradients,
        only a chunk's phi and its n exist at once."""
        queries, k, v, key_keep, state, norm, out = ctx.saved_tensors
        rows = ctx.rows
        grad_queries = torch.empty_like(queries)
        grad_state, grad_norm = torch.zeros_like(state), torch.zeros_like(norm)
        for start in range(0, queries.shape[2], rows):
            part = slice(start, start + rows)
            phi_q = elu_feature_map(queries[:, :, part])
            den = phi_q @ norm
            n = grad[:, :, part] / den
            grad_state.add_(phi_q.transpose(-1, -2) @ n)
            grad_phi = grad_queries[:, :, part]
            torch.matmul(n, state.transpose(-1, -2), out=grad_phi)
            t = n.mul_(out[:, :, part]).sum(-1, keepdim=True).neg_()  # -(g . out) / den, in n's memory
            del n
            grad_norm.add_(phi_q.transpose(-1, -2) @ t)
            grad_phi.addcmul_(t, norm.transpose(-1, -2)).mul_(_feature_slope_(phi_q))
        del phi_q  # the last chunk's, before the key gradients exist
        grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)
        for start in range(0, k.shape[2], rows):
            part = slice(start, start + rows)
            phi_k = _key_features(k, key_keep, part)
            torch.matmul(phi_k, grad_state, out=grad_v[:, :, part])
            grad_phi = grad_k[:, :, part]
            torch.matmul(v[:, :, part], grad_state.transpose(-1, -2), out=grad_phi)
            # a padded key's phi is 0, so its slope reads 0 too: its gradient is 0, as it should be
            grad_phi.add_(grad_norm.transpose(-1, -2)).mul_(_feature_slope_(phi_k))
        return grad_queries, grad_k, grad_v, None, None


def _non_causal_rows(queries, k, v, key_keep, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """_NonCausalRows' forward without a graph: (out, S, z), the state and the queries `rows` rows at a time."""
    batch, kv_heads, kv_len, head_dim = k.shape
    state = k.new_zeros(batch, kv_heads, head_dim, v.shape[-1])
    norm = k.new_zeros(batch, kv_heads, head_dim, 1)
    for start in range(0, kv_len, rows):
        phi_k = _key_features(k, key_keep, slice(start, start + rows))
        state.add_(phi_k.transpose(-1, -2) @ v[:, :, start : start + rows])
        norm.add_(phi_k.sum(-2)[..., None])
    if queries.shape[2] <= rows:  # one chunk: its result is the output, no copy into one
        phi_q = elu_feature_map(queries)
        return (phi_q @ state).div_(phi_q @ norm), state, norm
    out = queries.new_empty(*queries.shape[:-1], v.shape[-1])
    for start in range(0, queries.shape[2], rows):
        phi_q = elu_feature_map(queries[:, :, start : start + rows])
        out[:, :, start : start + rows] = (phi_q @ state).div_(phi_q @ norm)
    return out, state, norm


def _key_features(k: torch.Tensor, key_keep: torch.Tensor | None, part: slice) -> torch.Tensor:
    """phi(k) of rows `part`, zero for padded keys."""
    phi_k = elu_feature_map(k[:, :, part])
    return phi_k if key_keep is None else phi_k.mul_(key_keep[:, :, part])


class LinearAttention(Attention):
    """phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1) with phi = elu + 1; causal by chunked prefix sums."""

    def __init__(self, problem: Problem, causal_chunk: int) -> None:
        super().__init__(problem)
        self.chunk = min(causal_chunk, problem.q_len)
        self.compute_dtype = torch.float32 if problem.dtype in ("float16", "bfloat16") else problem.torch_dtype
        mask = problem.key_padding_mask()  # (B, Nk) or None
        self.register_buffer("key_keep", None if mask is None else mask[:, None, :, None].to(self.compute_dtype))
        # (G*c, c): the causal mask of one chunk, repeated for the G query heads stacked on its rows
        causal = torch.ones(self.chunk, self.chunk, dtype=self.compute_dtype, device=problem.device).tril_()
        self.register_buffer("chunk_causal", causal.repeat(problem.group_size, 1))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out_dtype = q.dtype
        q, k, v = (x.to(self.compute_dtype) for x in (q, k, v))
        if not self.problem.causal:
            batch, kv_heads, _, head_dim = k.shape
            rows = max(1, ROW_CHUNK_BYTES // (batch * kv_heads * head_dim * k.element_size()))
            queries = grouped_queries(q, kv_heads)
            if builds_graph(q, k, v):
                out = _NonCausalRows.apply(queries, k, v, self.key_keep, rows)
            else:  # no graph to build: the same rows, without an autograd node and its saved tensors
                out = _non_causal_rows(queries, k, v, self.key_keep, rows)[0]
            return out.view(q.shape).to(out_dtype)
        phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
        if self.key_keep is not None:
            phi_k = phi_k * self.key_keep
        return self._causal(phi_q, phi_k, v).to(out_dtype)

    def _causal(self, phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """phi_q (B, Hq, Nq, d); phi_k, v (B, Hkv, Nk, d) -> (B, Hq, Nq, d)."""
        batch, kv_heads, kv_len, head_dim = phi_k.shape
        heads, q_len, c = phi_q.shape[1], phi_q.shape[2], self.chunk
        group, chunks = heads // kv_heads, -(-q_len // c)
        offset, pad = kv_len - q_len, chunks * c - q_len
        # keys before the first query's position are seen by every query: the initial sums. No slice when
        # there are none: a slice's backward zero-fills a tensor as large as the whole input, even an empty one's
        s0 = phi_k.new_zeros(batch, kv_heads, head_dim, v.shape[-1])  # (B, Hkv, d, e)
        z0 = phi_k.new_zeros(batch, kv_heads, head_dim)  # (B, Hkv, d)
        if offset:
            s0 = phi_k[:, :, :offset].transpose(-1, -2) @ v[:, :, :offset]
            z0 = phi_k[:, :, :offset].sum(-2)
            phi_k, v = phi_k[:, :, offset:], v[:, :, offset:]
        # key offset + i sits at query i: chunk both alike (zero padding adds nothing)
        k_chunks = pad_rows(phi_k, pad).reshape(batch * kv_heads, chunks, c, head_dim)
        v_chunks = pad_rows(v, pad).reshape(batch * kv_heads, chunks, c, head_dim)
        # queries: (B, Hq, Nq, d) -> (B*Hkv, nc, G*c, d), a chunk's G heads stacked on its rows
        q_chunks = pad_rows(phi_q, pad).reshape(batch, kv_heads, group, chunks, c, head_dim)
        q_chunks = q_chunks.transpose(2, 3).reshape(batch * kv_heads, chunks, group * c, head_dim)
        out = _CausalChunks.apply(
            q_chunks, k_chunks, v_chunks, s0.flatten(0, 1), z0.flatten(0, 1), self.chunk_causal
        )  # (B*Hkv, nc, G*c, d)
        out = out.view(batch, kv_heads, chunks, group, c, head_dim).transpose(2, 3)
        out = out.reshape(batch, heads, chunks * c, head_dim)
        return out[:, :, :q_len] if pad else out

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return linear_dense(q, k, v, self.problem.allowed_mask())

    def decode_state(self, k: torch.Tensor, v: torch.Tensor) -> RecurrentState:
        """The recurrent state S = sum_j phi(k_j) [v_j, 1]^T (B, Hkv, d, d+1) of the context: fixed in L."""
        phi_k, v = elu_feature_map(k.to(self.compute_dtype)), v.to(self.compute_dtype)
        return RecurrentState(phi_k.transpose(-1, -2) @ torch.cat([v, v.new_ones(*v.shape[:3], 1)], -1), k.shape[2])

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: RecurrentState):
        """The paper's recurrent form: out_t = phi(q_t)^T (S + new keys s <= t) / the same with [.., 1]; S updated."""
        compute, steps, head_dim = self.compute_dtype, q.shape[2], q.shape[3]
        phi_q = grouped_queries(elu_feature_map(q.to(compute)), k.shape[1])  # (B, Hkv, G*T, d)
        phi_k, v = elu_feature_map(k.to(compute)), v.to(compute)
        v_ones = torch.cat([v, v.new_ones(*v.shape[:3], 1)], dim=-1)  # (B, Hkv, T, d+1)
        within = (phi_q @ phi_k.transpose(-1, -2)).mul_(
            new_token_mask(steps, q.device).repeat(q.shape[1] // k.shape[1], 1)
        )
        out = (phi_q @ state.sums).add_(within @ v_ones)
        out = out[..., :head_dim] / out[..., head_dim:]
        sums = state.sums + phi_k.transpose(-1, -2) @ v_ones
        return out.reshape(q.shape).to(q.dtype), RecurrentState(sums, state.position + steps)


def _flops(problem: Problem, hparams: dict) -> float:
    d = problem.head_dim
    q_rows, k_rows = problem.q_heads * problem.q_len, problem.kv_heads * problem.kv_len
    sums = 2 * k_rows * d * (d + 1) + 2 * q_rows * d * (d + 1)  # phi(K)^T [V, 1], and phi(Q) times it
    within_chunks = 0
    if problem.causal:
        within_chunks = 2 * q_rows * min(hparams["causal_chunk"], problem.q_len) * (2 * d + 1)
    return float(problem.batch * (sums + within_chunks))


@register(
    family="kernel",
    exact=False,
    time="N*d*(d+c)",
    memory="N*(d+c)",
    flops=_flops,
    oracle_hparams={"causal_chunk": 16},
    decode=True,
)
def linear_attention(problem: Problem, *, causal_chunk: Annotated[int, AtLeast(1)] = 64) -> Attention:
    """Linear attention (Katharopoulos): phi = elu + 1, phi(Q)(phi(K)^T V) with its normaliser, in O(N*d^2)."""
    return LinearAttention(problem, causal_chunk)
