"""Public attention packages behind our interface, so one sweep measures theirs against ours.

Each peer takes the same hyperparameter names as our entry for its algorithm (window, proj_len and
share_kv, num_features and redraw), mapped onto the package's own arguments as closely as the package
allows; what still differs is said on each class. The packages are imported only when an entry is
checked or built, so `import attention_zoo` works without them (pip install 'attention-zoo[peers]').
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
from typing import Annotated

import torch

from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import register
from attention_zoo.rules import AtLeast

PEERS_EXTRA = "pip install 'attention-zoo[peers]'"


def _missing_reason(module: str, package: str) -> str | None:
    """Why a peer cannot run when its package is absent, naming the package and the extra to install."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        return f"{package} is not installed ({error}); {PEERS_EXTRA}"
    return None


# --- local-attention ------------------------------------------------------------------------------


class PeerLocalAttention(Attention):
    """local_attention.LocalAttention: `window`-key buckets, each query scoring its bucket and neighbours.

    Mapping: window_size=window, look_backward=1, look_forward=0 if causal else 1, autopad=True, no
    rotary embedding, no shared QK, no dropout, scale 1/sqrt(d). With exact_windowsize=True (default)
    its mask is exactly our sliding window, |j - i| <= window (causal: i - window <= j <= i); with
    False a query sees whole buckets: keys from the start of the previous bucket to the end of its own
    (causal) or of the next one, i.e. between window+1 and 3*window keys. Either way it computes scores
    for 2*window (causal) or 3*window keys per query and masks the rest. Its mask value is finite, so
    a query whose window holds no valid key averages its slots; this adapter zeroes those rows, as our
    oracle does. No cross-attention (one length for q, k, v) and no GQA (heads are folded into batch).
    """

    def __init__(self, problem: Problem, window: int, exact_windowsize: bool) -> None:
        super().__init__(problem)
        self.window = window
        self.look_forward = 0 if problem.causal else 1
        self.exact_windowsize = exact_windowsize
        self.local_attention = importlib.import_module("local_attention").LocalAttention(
            window_size=window,
            causal=problem.causal,
            look_backward=1,
            look_forward=self.look_forward,
            autopad=True,
            exact_windowsize=exact_windowsize,
            use_rotary_pos_emb=False,
        )
        self.local_attention.requires_grad_(False)  # its own parameters, if any, are fixed: gradients reach q, k, v
        # autopad appends zero keys up to a multiple of the window; causal masks them by position, but
        # a non-causal query would attend them unless a key mask marks them (autopad pads it with False)
        needs_key_mask = problem.kv_valid_lens is not None or (not problem.causal and problem.kv_len % window != 0)
        self.key_mask = None
        if needs_key_mask:
            self.key_mask = problem.key_padding_mask()
            if self.key_mask is None:
                self.key_mask = torch.ones(problem.batch, problem.kv_len, dtype=torch.bool, device=problem.device)
        first_key, _ = self._key_span()
        self.row_keep = None  # (B, 1, N, 1): 0 for a query with no valid key, else 1; None if none lacks one
        if problem.kv_valid_lens is not None:
            valid = torch.tensor(problem.kv_valid_lens, device=problem.device)
            has_key = first_key[None, :] < valid[:, None]
            if not has_key.all():
                self.row_keep = has_key[:, None, :, None].to(problem.torch_dtype)

    def _key_span(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query i, the keys first[i] <= j < stop[i] its buckets (and exact window) cover."""
        q_pos = torch.arange(self.problem.q_len, device=self.problem.device)
        bucket_start = q_pos // self.window * self.window
        first = (bucket_start - self.window).clamp_min(0)
        stop = bucket_start + (1 + self.look_forward) * self.window
        if self.exact_windowsize:
            first = torch.maximum(first, q_pos - self.window)
            stop = torch.minimum(stop, q_pos + self.look_forward * self.window + 1)
        return first, stop

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = self.local_attention(q, k, v, mask=self.key_mask)
        return out if self.row_keep is None else out * self.row_keep

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        first, stop = self._key_span()
        k_pos = torch.arange(self.problem.kv_len, device=self.problem.device)
        in_span = (k_pos[None, :] >= first[:, None]) & (k_pos[None, :] < stop[:, None])
        return dense_attention(q, k, v, self.problem.allowed_mask() & in_span)


def _local_attention_flops(problem: Problem, hparams: dict) -> float:
    window = hparams["window"]
    padded_len = math.ceil(problem.q_len / window) * window
    scored_keys = (2 if problem.causal else 3) * window  # its bucket and the neighbours it looks at
    return 4.0 * problem.batch * problem.q_heads * padded_len * scored_keys * problem.head_dim


@register(
    family="sparse",
    exact=False,
    time="N*w",
    memory="N*w",
    features=("causal", "padding"),
    flops=_local_attention_flops,
    availability=lambda problem: _missing_reason("local_attention", "local-attention"),
    check_hparams={"window": 8},
)
def peer_local_attention(
    problem: Problem, *, window: Annotated[int, AtLeast(1)] = 256, exact_windowsize: bool = True
) -> Attention:
    """lucidrains' local-attention LocalAttention, bucketed; window as in sliding_window."""
    return PeerLocalAttention(problem, window, exact_windowsize)


# --- linformer ------------------------------------------------------------------------------------


class _Columns(torch.nn.Module):
    """Picks a slice of the feature axis: stands in for the package's key and value input projections."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.start : self.stop]


class PeerLinformer(Attention):
    """linformer.LinformerSelfAttention with its input and output projections replaced by identities.

    What runs is the package's own forward: keys and values projected along the sequence by its
    proj_k / proj_v (kv_len x proj_len, uniform(-1/sqrt(proj_len), 1/sqrt(proj_len)) init), then softmax
    attention with scale 1/sqrt(d). It takes token-major (B, N, H*d) tensors and one context for keys
    and values, so each call transposes q and concatenates k and v into one context (one copy each),
    and returns its output as a transposed view. share_kv=True ties proj_v to proj_k (the paper's
    E = F); the package's own share_kv would also use the keys as values, ignoring v. MQA runs through
    its one_kv_head; other GQA, causal and padding are not in the package.
    """

    def __init__(self, problem: Problem, proj_len: int, share_kv: bool, seed: int) -> None:
        super().__init__(problem)
        heads, head_dim = problem.q_heads, problem.head_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = importlib.import_module("linformer").LinformerSelfAttention(
                dim=heads * head_dim,
                seq_len=problem.kv_len,
                k=proj_len,
                heads=heads,
                dim_head=head_dim,
                one_kv_head=problem.kv_heads == 1,
                share_kv=False,
            )
        kv_width = problem.kv_heads * head_dim
        module.to_q, module.to_out = torch.nn.Identity(), torch.nn.Identity()
        module.to_k, module.to_v = _Columns(0, kv_width), _Columns(kv_width, 2 * kv_width)
        if share_kv:
            module.proj_v = module.proj_k
        # its sequence projections are fixed, as ours are: no graph for them in the forward, no gradient in backward
        self.linformer = module.to(device=problem.device, dtype=problem.torch_dtype).requires_grad_(False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, q_heads, q_len, head_dim = q.shape
        tokens = q.transpose(1, 2).reshape(batch, q_len, q_heads * head_dim)  # (B, Nq, Hq*d)
        context = torch.cat((k.transpose(1, 2), v.transpose(1, 2)), dim=2).flatten(2)  # (B, Nk, 2*Hkv*d)
        out = self.linformer(tokens, context=context)  # (B, Nq, Hq*d)
        return out.view(batch, q_len, q_heads, head_dim).transpose(1, 2)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        proj_k, proj_v = self.linformer.proj_k.double(), self.linformer.proj_v.double()
        k_projected = torch.einsum("bhnd,nk->bhkd", k, proj_k)  # (B, Hkv, proj_len, d)
        v_projected = torch.einsum("bhnd,nk->bhkd", v, proj_v)
        return dense_attention(q, k_projected, v_projected)


def _linformer_availability(problem: Problem) -> str | None:
    if problem.kv_heads not in (1, problem.q_heads):
        return "linformer shares key/value heads only as one head for all (one_kv_head), not in groups"
    return _missing_reason("linformer", "linformer")


def _linformer_flops(problem: Problem, hparams: dict) -> float:
    proj_len = hparams["proj_len"]
    sequence_projection = 2 * 2.0 * problem.kv_heads * problem.kv_len * proj_len * problem.head_dim
    attention = 4.0 * problem.q_heads * problem.q_len * proj_len * problem.head_dim
    return problem.batch * (sequence_projection + attention)


@register(
    family="low_rank",
    exact=False,
    time="N*k",
    memory="N*k",
    features=("cross", "gqa"),
    flops=_linformer_flops,
    availability=_linformer_availability,
    check_hparams={"proj_len": 8},
)
def peer_linformer(
    problem: Problem, *, proj_len: Annotated[int, AtLeast(1)] = 256, share_kv: bool = False, seed: int = 0
) -> Attention:
    """The linformer package's LinformerSelfAttention core; proj_len and share_kv as in linformer."""
    return PeerLinformer(problem, proj_len, share_kv, seed)


# --- performer-pytorch ----------------------------------------------------------------------------

# performer_pytorch's constants: softmax_kernel's eps and causal_linear_attention(_noncuda)'s eps
FEATURE_EPS = 1e-4
CAUSAL_DENOMINATOR_EPS = 1e-6


class PeerPerformer(Attention):
    """performer_pytorch.FastAttention: FAVOR+ positive random features of the softmax kernel.

    nb_features=num_features, ortho_scaling=0 (orthogonal rows with chi-distributed norms), softmax
    kernel, projection drawn from `seed`. Its features add eps=1e-4 and subtract a stabiliser that does
    not cancel because of that eps: the row max for queries and the max over all keys and features for
    keys (so a causal output depends slightly on later keys); its causal denominator adds 1e-6 per
    feature. Causal runs its prefix-sum fallback (128 chunks, d x m context per position kept for
    backward) unless fast_transformers' CUDA kernel is installed. redraw=True draws a new projection at
    every call, as its ProjectionUpdater does with feature_redraw_interval=1. No float16: that
    stabiliser leaves normalisers near 1e-5, whose reciprocal overflows float16 to inf and the output to NaN.
    """

    def __init__(self, problem: Problem, num_features: int, redraw: bool, seed: int) -> None:
        super().__init__(problem)
        self.redraw = redraw
        # FastAttention prints a notice when it falls back from the CUDA causal kernel; the doc says it
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
            torch.manual_seed(seed)
            fast_attention = importlib.import_module("performer_pytorch").FastAttention(
                dim_heads=problem.head_dim,
                nb_features=num_features,
                ortho_scaling=0,
                causal=problem.causal,
                generalized_attention=False,
            )
        self.fast_attention = fast_attention.to(device=problem.device, dtype=problem.torch_dtype).requires_grad_(False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.redraw:
            self.fast_attention.redraw_projection_matrix(q.device)
        return self.fast_attention(q, k, v)

    def _features(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """softmax_kernel in float64: ratio * (exp(x'w - |x'|^2/2 - stabiliser) + eps), x' = x / d^(1/4)."""
        projection = self.fast_attention.projection_matrix.double()  # (m, d)
        scaled = x * x.shape[-1] ** -0.25
        projected = scaled @ projection.T  # (B, H, N, m)
        half_norm = (scaled**2).sum(dim=-1, keepdim=True) / 2
        stabiliser = projected.amax(dim=-1 if is_query else (-1, -2), keepdim=True).detach()
        return projection.shape[0] ** -0.5 * (torch.exp(projected - half_norm - stabiliser) + FEATURE_EPS)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q_features, k_features = self._features(q, is_query=True), self._features(k, is_query=False)
        kernel = q_features @ k_features.transpose(-1, -2)  # (B, H, Nq, Nk), all positive
        if self.problem.causal:
            kernel = kernel.masked_fill(~self.problem.allowed_mask(), 0.0)
        denominator = kernel.sum(dim=-1, keepdim=True)
        if self.problem.causal:
            denominator = denominator + CAUSAL_DENOMINATOR_EPS * q_features.sum(dim=-1, keepdim=True)
        return kernel @ v / denominator


def _performer_availability(problem: Problem) -> str | None:
    if problem.causal and problem.q_len != problem.kv_len:
        return "performer_pytorch's causal prefix sums pair query i with key i, so causal needs q_len == kv_len"
    return _missing_reason("performer_pytorch", "performer-pytorch")


def _performer_flops(problem: Problem, hparams: dict) -> float:
    # features of q and k (2*N*m*d each), then K'^T V and Q'(K'^T V) or their prefix-sum form (2*N*m*d each)
    per_head = 4.0 * hparams["num_features"] * problem.head_dim * (problem.q_len + problem.kv_len)
    return problem.batch * problem.q_heads * per_head


@register(
    family="kernel",
    exact=False,
    time="N*m*d",
    memory="N*m*d",  # the causal fallback keeps a d x m context per position; non-causal holds N*m
    dtypes=("float32", "bfloat16", "float64"),
    features=("causal", "cross"),
    flops=_performer_flops,
    availability=_performer_availability,
    check_hparams={"num_features": 16},
)
def peer_performer(
    problem: Problem, *, num_features: Annotated[int, AtLeast(1)] = 256, redraw: bool = False, seed: int = 0
) -> Attention:
    """performer-pytorch's FastAttention (FAVOR+ softmax kernel); num_features and redraw as in performer."""
    return PeerPerformer(problem, num_features, redraw, seed)
