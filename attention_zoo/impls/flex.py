"""The sliding-window and Longformer patterns of sparse.py through torch's compiled flex_attention and a BlockMask.

The mask is sparse.window_predicate itself, used as the mask_mod, so both families share one convention.
Building creates the BlockMask and runs one warm-up call in the current grad mode (the harness's), which
compiles flex_attention for the problem's shapes (seconds per new shape on CPU, cached afterwards): the
harness counts this as setup. A call with inputs that require grad is a graph of its own, compiled at
the first such call, which the harness makes while warming up. One compiled function serves every
build, and the mask's settings are captured tensors, so problems of the same shape reuse one compiled
graph whatever their window.

flex_attention has a backward pass on CUDA; on CPU in torch 2.13 it raises NotImplementedError, so the
entries declare backward on CUDA only.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from attention_zoo.impls.sparse import GlobalTokens, Window, band_flops, window_allowed, window_predicate
from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.reference import dense_attention
from attention_zoo.registry import FEATURES, register

# Eager create_block_mask materialises the dense (B, 1, Nq, Nk) mask and its int64 intermediates;
# above this many (query, key) pairs the mask is built by a compiled create_block_mask instead.
EAGER_MASK_PAIRS = 1 << 22
# distinct problem shapes one process may compile flex_attention for (each compiled graph is kept)
RECOMPILE_LIMIT = 256
COUNT_ROWS = 256  # query rows per step when the FLOP count evaluates the mask
# On CUDA, flex_attention's AUTO backend takes its decoding kernel for queries shorter than 128 with a
# power-of-two GQA group; that kernel's row block is next_pow2(q_len * group), and when it exceeds the
# BlockMask's 128-row block every config is skipped (NoValidChoicesError, seen on an H200 with torch 2.11
# for 4 query heads per kv head at q_len 70). These entries are never a decode step: the main kernel always.
CUDA_KERNEL_OPTIONS = {"BACKEND": "TRITON"}


@functools.cache
def _compiled(function):
    """One compiled function per process: every build shares its cache of compiled graphs.

    Past dynamo's recompile limit (8 graphs) flex_attention would silently fall back to its unfused
    eager path, which materialises the N x N scores; the limit is raised for the process.
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(function, dynamic=False)


def _availability(problem: Problem) -> str | None:
    if problem.device_type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        return "torch.compile of flex_attention on CPU needs a C++ compiler (g++), none is on PATH"
    return None


def _mask_mod(problem: Problem, window: int, global_tokens: int):
    allowed = window_predicate(problem, window, global_tokens)

    def window_mask(batch_idx, head_idx, q_idx, kv_idx):
        return allowed(batch_idx, q_idx, kv_idx)

    return window_mask


def window_block_mask(problem: Problem, window: int, global_tokens: int) -> BlockMask:
    """The pattern's BlockMask, its block structure computed on the CPU and moved to the problem's device.

    On CUDA, torch 2.11's compiled create_block_mask lowers its argsort to a Triton sort whose cold compile
    grows pathologically with the number of blocks (pytorch#182060): at N = 16k it ran past the harness's
    120 s cell limit on an H200, where the N = 4k build took 14 s. On the CPU it compiles in seconds at any N.
    """
    host = dataclasses.replace(problem, device="cpu")
    large = problem.batch * problem.q_len * problem.kv_len > EAGER_MASK_PAIRS
    make_block_mask = _compiled(create_block_mask) if large else create_block_mask
    structure = make_block_mask(
        _mask_mod(host, window, global_tokens), problem.batch, None, problem.q_len, problem.kv_len, device="cpu"
    )
    if problem.device_type == "cpu":
        return structure
    return moved_block_mask(structure, problem.device, _mask_mod(problem, window, global_tokens))


def moved_block_mask(structure: BlockMask, device: str, mask_mod) -> BlockMask:
    """structure's blocks on device, with a mask_mod whose captured tensors live there (BlockMask.to would
    keep the CPU mask_mod's)."""
    kv_blocks = (structure.kv_num_blocks, structure.kv_indices, structure.full_kv_num_blocks, structure.full_kv_indices)
    return BlockMask.from_kv_blocks(
        *(None if blocks is None else blocks.to(device) for blocks in kv_blocks),
        BLOCK_SIZE=structure.BLOCK_SIZE,
        mask_mod=mask_mod,
        seq_lengths=structure.seq_lengths,
    )


class FlexWindowAttention(Attention):
    """flex_attention with a BlockMask of the window (+ global) pattern, compiled and warmed up at build."""

    def __init__(self, problem: Problem, window: int, global_tokens: int) -> None:
        super().__init__(problem)
        self.window, self.global_tokens = window, global_tokens
        self.block_mask = window_block_mask(problem, window, global_tokens)
        self.enable_gqa = problem.group_size > 1
        self.kernel_options = CUDA_KERNEL_OPTIONS if problem.device_type == "cuda" else None
        self.flex_attention = _compiled(flex_attention)
        # compile now, in the grad mode the calls run in (the harness's); the values do not matter, so they
        # are drawn on the device (make_inputs draws in float64 on the host: seconds at N = 16k)
        shapes = [
            (problem.q_heads, problem.q_len),
            (problem.kv_heads, problem.kv_len),
            (problem.kv_heads, problem.kv_len),
        ]
        options = {"dtype": problem.torch_dtype, "device": problem.device}
        self(*(torch.randn(problem.batch, heads, length, problem.head_dim, **options) for heads, length in shapes))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.flex_attention(
            q, k, v, block_mask=self.block_mask, enable_gqa=self.enable_gqa, kernel_options=self.kernel_options
        )

    def dense_reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return dense_attention(q, k, v, window_allowed(self.problem, self.window, self.global_tokens))


def _flops(problem: Problem, hparams: Mapping[str, Any]) -> float:
    """Useful forward FLOPs: the window pattern's pairs; with packed documents, the pairs the mask allows,
    counted COUNT_ROWS query rows at a time (documents cut the band and the global rows)."""
    if problem.doc_lens is None:
        return band_flops(problem, hparams)
    counted = dataclasses.replace(problem, device="cpu")
    allowed = window_predicate(counted, hparams["window"], hparams.get("global_tokens", 0))
    batch_idx = torch.arange(problem.batch)[:, None, None]
    keys = torch.arange(problem.kv_len)
    pairs = sum(
        int(allowed(batch_idx, torch.arange(start, min(start + COUNT_ROWS, problem.q_len))[:, None], keys).sum())
        for start in range(0, problem.q_len, COUNT_ROWS)
    )
    return 4.0 * problem.q_heads * problem.head_dim * pairs


def _backward_availability(problem: Problem) -> str | None:
    if problem.device_type == "cpu":
        return "flex_attention has no backward pass on CPU in torch 2.13 (it has one on CUDA)"
    return None


FLEX = {
    "family": "sparse",
    "exact": False,
    "backward_availability": _backward_availability,
    "dtypes": ("float32", "float16", "bfloat16"),
    "flops": _flops,
    "availability": _availability,
    "features": FEATURES,  # packed documents too: the mask_mod checks the document (sparse.window_predicate)
    # flex_attention compiles one BlockMask per shape: a decode step would recompile as the cache grows
    "decode": "the mask is compiled into a BlockMask per (Nq, Nk): each step's longer cache would recompile; "
    "sliding_window's ring is this mask's decode step",
}


@register(time="N*w", memory="N", oracle_hparams={"window": 5}, **FLEX)
def flex_sliding_window(problem: Problem, *, window: Window = 256) -> Attention:
    """sliding_window's band through compiled flex_attention and a BlockMask (build compiles; forward only)."""
    return FlexWindowAttention(problem, window, 0)


@register(time="N*(w+g)", memory="N", oracle_hparams={"window": 5, "global_tokens": 3}, **FLEX)
def flex_global(problem: Problem, *, window: Window = 256, global_tokens: GlobalTokens = 16) -> Attention:
    """window_global's Longformer pattern through compiled flex_attention and a BlockMask (build compiles)."""
    return FlexWindowAttention(problem, window, global_tokens)
