"""torch.nn.functional.scaled_dot_product_attention with one backend pinned."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attention_zoo.decode import KVCache
from attention_zoo.errors import first_line
from attention_zoo.impls.full import rectangle_flops
from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.registry import FEATURES, register


class PinnedSDPA(Attention):
    """SDPA restricted to one backend: a backend that cannot run raises instead of falling back."""

    def __init__(self, problem: Problem, backend: SDPBackend) -> None:
        super().__init__(problem)
        self.backend = backend
        self.enable_gqa = problem.group_size > 1
        masked = problem.kv_valid_lens is not None or problem.doc_lens is not None  # padding, packed documents
        self.is_causal = problem.causal and problem.q_len == problem.kv_len and not masked
        if masked:
            self.attn_mask = problem.allowed_mask()  # (B, 1, Nq, Nk) bool, built once
        elif problem.causal and not self.is_causal:
            # SDPA's is_causal is top-left aligned; the problem's convention is bottom-right.
            # Imported here: torch.nn.attention.bias imports torch._dynamo, which imports triton.
            from torch.nn.attention.bias import causal_lower_right

            self.attn_mask = causal_lower_right(problem.q_len, problem.kv_len)
        else:
            self.attn_mask = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel([self.backend]):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=self.attn_mask, is_causal=self.is_causal, enable_gqa=self.enable_gqa
            )

    def decode_state(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """The KV cache: the context's keys and values, with room for the problem's T new tokens."""
        return KVCache.from_context(k, v, self.problem.q_len)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache):
        """The pinned backend on the T new queries against the cache (bottom-right causal among the new tokens)."""
        cache = cache.append(k, v)
        keys, steps = cache.keys, q.shape[2]
        mask = None
        if steps > 1:
            from torch.nn.attention.bias import causal_lower_right  # see __init__: imports triton

            mask = causal_lower_right(steps, keys.shape[2])
        with sdpa_kernel([self.backend]):
            out = F.scaled_dot_product_attention(q, keys, cache.values, attn_mask=mask, enable_gqa=self.enable_gqa)
        return out, cache


@functools.cache
def _probe(backend: SDPBackend, probe: Problem) -> str | None:
    try:
        PinnedSDPA(probe, backend)(*probe.make_inputs())
    except RuntimeError as error:
        return f"SDPA's {backend.name} backend cannot run this problem: {first_line(error) or type(error).__name__}"
    return None


def _backend_availability(backend: SDPBackend):
    """A reason when the pinned backend cannot run the problem, found by running a tiny problem of the same kind."""

    def availability(problem: Problem) -> str | None:
        if backend in (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION) and problem.device_type != "cuda":
            return f"SDPA's {backend.name} backend has CUDA kernels only, none for {problem.device_type}"
        q_len = min(problem.q_len, 4)
        if problem.kv_len == problem.q_len:
            kv_len = q_len
        else:  # keep the probe a cross-attention problem of the same orientation
            kv_len = q_len + 3 if problem.kv_len > problem.q_len else q_len - 1
        probe = Problem(
            batch=1,
            q_heads=problem.q_heads,
            kv_heads=problem.kv_heads,
            q_len=q_len,
            kv_len=kv_len,
            head_dim=problem.head_dim,
            causal=problem.causal,
            kv_valid_lens=None if problem.kv_valid_lens is None else (1,),
            doc_lens=None if problem.doc_lens is None else (q_len - 1, 1) if q_len > 1 else (1,),
            dtype=problem.dtype,
            device=problem.device,
        )
        return _probe(backend, probe)

    return availability


# every backend: exact, quadratic time, a decode step, any mask (as attn_mask) the backend's probe accepts
PINNED = {"exact": True, "time": "N^2", "decode": True, "features": FEATURES}


@register(
    family="full",
    memory="N^2",
    flops_executed=rectangle_flops,
    availability=_backend_availability(SDPBackend.MATH),
    **PINNED,
)
def sdpa_math(problem: Problem) -> Attention:
    """PyTorch SDPA pinned to its math backend (unfused, materialises the scores)."""
    return PinnedSDPA(problem, SDPBackend.MATH)


@register(family="flash", memory="N", availability=_backend_availability(SDPBackend.FLASH_ATTENTION), **PINNED)
def sdpa_flash(problem: Problem) -> Attention:
    """PyTorch SDPA pinned to its FlashAttention backend (on CPU, torch's fused flash kernel)."""
    return PinnedSDPA(problem, SDPBackend.FLASH_ATTENTION)


@register(family="flash", memory="N", availability=_backend_availability(SDPBackend.EFFICIENT_ATTENTION), **PINNED)
def sdpa_efficient(problem: Problem) -> Attention:
    """PyTorch SDPA pinned to its memory-efficient (xformers-derived, CUDA) backend."""
    return PinnedSDPA(problem, SDPBackend.EFFICIENT_ATTENTION)


@register(family="flash", memory="N", availability=_backend_availability(SDPBackend.CUDNN_ATTENTION), **PINNED)
def sdpa_cudnn(problem: Problem) -> Attention:
    """PyTorch SDPA pinned to its cuDNN (CUDA) backend."""
    return PinnedSDPA(problem, SDPBackend.CUDNN_ATTENTION)
