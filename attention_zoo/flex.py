"""The sliding-window and Longformer patterns of sparse.py through torch's compiled flex_attention and a BlockMask.

The mask is sparse.window_predicate itself, used as the mask_mod, so both families share one convention.
Building creates the BlockMask and runs one warm-up call, which compiles flex_attention for the problem's
shapes (seconds per new shape on CPU, cached afterwards): the harness counts this as setup, and the
first timed call does not compile. One compiled function serves every build, and the mask's settings
are captured tensors, so problems of the same shape reuse one compiled graph whatever their window.

flex_attention has no backward pass on CPU in torch 2.13 (it raises NotImplementedError); the registry's
modes do not depend on the device, so these entries declare forward only everywhere.
"""

from __future__ import annotations

import functools
import shutil

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import register
from attention_zoo.sparse import GlobalTokens, Window, band_flops, window_allowed, window_predicate

# Eager create_block_mask materialises the dense (B, 1, Nq, Nk) mask and its int64 intermediates;
# above this many (query, key) pairs the mask is built by a compiled create_block_mask instead.
EAGER_MASK_PAIRS = 1 << 22
# distinct problem shapes one process may compile flex_attention for (each compiled graph is kept)
RECOMPILE_LIMIT = 256


@functools.cache
def _compiled(function):
    """One compiled function per process: every build shares its cache of compiled graphs."""
    return torch.compile(function, dynamic=False)


def _availability(problem: Problem) -> str | None:
    if problem.device_type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        return "torch.compile of flex_attention on CPU needs a C++ compiler (g++), none is on PATH"
    return None


class FlexWindowAttention(Attention):
    """flex_attention with a BlockMask of the window (+ global) pattern, compiled and warmed up at build."""

    def __init__(self, problem: Problem, window: int, global_tokens: int) -> None:
        super().__init__(problem)
        self.window, self.global_tokens = window, global_tokens
        allowed = window_predicate(problem, window, global_tokens)

        def window_mask(batch_idx, head_idx, q_idx, kv_idx):
            return allowed(batch_idx, q_idx, kv_idx)

        large = problem.batch * problem.q_len * problem.kv_len > EAGER_MASK_PAIRS
        make_block_mask = _compiled(create_block_mask) if large else create_block_mask
        self.block_mask = make_block_mask(
            window_mask, problem.batch, None, problem.q_len, problem.kv_len, device=problem.device
        )
        self.enable_gqa = problem.group_size > 1
        self.flex_attention = _compiled(flex_attention)
        # compile now, so that no timed call does: grad mode is part of the compiled graph's guards, so warm
        # up in both. Past dynamo's recompile limit (8 graphs) flex_attention would silently fall back to
        # its unfused eager path, which materialises the N x N scores.
        inputs = problem.make_inputs()
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            for grad_enabled in (False, True):
                with torch.set_grad_enabled(grad_enabled):
                    self(*inputs)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.flex_attention(q, k, v, block_mask=self.block_mask, enable_gqa=self.enable_gqa)

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return dense_attention(q, k, v, window_allowed(self.problem, self.window, self.global_tokens))


FLEX = {
    "family": "sparse",
    "exact": False,
    "modes": ("forward",),
    "dtypes": ("float32", "float16", "bfloat16"),
    "flops": band_flops,
    "availability": _availability,
}


@register(time="N*w", memory="N", check_hparams={"window": 5}, **FLEX)
def flex_sliding_window(problem: Problem, *, window: Window = 256) -> Attention:
    """sliding_window's band through compiled flex_attention and a BlockMask (build compiles; forward only)."""
    return FlexWindowAttention(problem, window, 0)


@register(time="N*(w+g)", memory="N", check_hparams={"window": 5, "global_tokens": 3}, **FLEX)
def flex_global(problem: Problem, *, window: Window = 256, global_tokens: GlobalTokens = 16) -> Attention:
    """window_global's Longformer pattern through compiled flex_attention and a BlockMask (build compiles)."""
    return FlexWindowAttention(problem, window, global_tokens)
