"""triton_flash: FlashAttention 2 written in Triton in this project, forward and backward.

The kernels live in attention_zoo.impls.triton_flash_kernels and are imported when the entry is built, so
importing attention_zoo never imports triton. On CPU the entry runs only under Triton's interpreter
(TRITON_INTERPRET=1, set before triton is imported), which is how the CPU test suite checks it.
float32 runs its dot products in IEEE fp32 (input_precision="ieee"), not TF32: TF32's 10-bit
mantissa lands near 1e-3 relative error, above the float32 oracle tolerance of 1e-4.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Annotated

import torch

from attention_zoo.interface import Attention
from attention_zoo.problem import Problem
from attention_zoo.registry import HyperparameterError, register
from attention_zoo.rules import AtLeast, OneOf

TILE_SIZES = (16, 32, 64, 128, 256)
# automatic tiles: Triton's tutorial backward (block_m, block_n, warps, stages); the interpreter's forward
BACKWARD_TILES = {"16-bit": (128, 32, 4, 5), "float32": (64, 32, 4, 2)}
INTERPRETER_FORWARD_TILES = (64, 64, 4, 3)
MAX_HEAD_DIM = 128
INSTALL_HINT = "pip install 'attention-zoo[triton]'"


def _interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (read the way triton.knobs reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernels():
    return importlib.import_module("attention_zoo.impls.triton_flash_kernels")


def _strides(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.stride())


@dataclass(frozen=True)
class Tiles:
    """One kernel's launch shape: query rows (block_m) x key rows (block_n) per program, warps, pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def launch(self) -> dict[str, int]:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "num_warps": self.num_warps,
                "num_stages": self.num_stages}  # fmt: skip


def _describe(tiles: Tiles, compiled) -> str:
    """ "128x64 w4 s3", with the compiled kernel's registers per thread and spills where Triton reports them."""
    text = f"{tiles.block_m}x{tiles.block_n} w{tiles.num_warps} s{tiles.num_stages}"
    n_regs, n_spills = getattr(compiled, "n_regs", None), getattr(compiled, "n_spills", None)
    return text if n_regs is None else f"{text} regs={n_regs} spills={n_spills}"


class _TritonFlashFunction(torch.autograd.Function):
    """FA2 forward saving O and the base-2 log-sum-exp; backward = delta preprocess, dK/dV kernel, dQ kernel."""

    @staticmethod
    def forward(ctx, q, k, v, attention: TritonFlash):
        kernels = _kernels()
        batch, q_heads, q_len, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty((batch, q_heads, q_len), dtype=torch.float32, device=q.device)
        args = (
            q, k, v, out, lse, attention.valid_lens,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            q_heads, q_len, k.shape[2], attention.qk_scale,
        )  # fmt: skip
        if attention.forward_tiles is None:  # autotuned per (Nq, Nk, head dim, causal, group)
            kernel = kernels.autotuned_fwd_kernel()
            compiled = kernel[lambda meta: (math.ceil(q_len / meta["BLOCK_M"]), batch * q_heads)](
                *args, **attention.constants
            )
            best = kernel.best_config
            tiles = Tiles(best.kwargs["BLOCK_M"], best.kwargs["BLOCK_N"], best.num_warps, best.num_stages)
        else:
            tiles = attention.forward_tiles
            grid = (math.ceil(q_len / tiles.block_m), batch * q_heads)
            compiled = kernels.fwd_kernel[grid](*args, **tiles.launch(), **attention.constants)
        attention.log_kernel("fwd", tiles, compiled)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.attention = attention
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with torch.cuda.device_of(grad_out):  # Triton launches on the current CUDA device; no-op on CPU
            grad_out = grad_out.contiguous()  # autograd may hand over an expanded (zero-stride) gradient
            return (*_flash_backward(ctx.attention, *ctx.saved_tensors, grad_out), None)


def _flash_backward(attention: TritonFlash, q, k, v, out, lse, grad_out):
    """FA2 backward: delta = rowsum(dO * O), then dK/dV over query tiles and dQ over key tiles."""
    kernels, constants, tiles = _kernels(), attention.constants, attention.backward_tiles
    batch, q_heads, q_len, _ = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    block_m, block_n = tiles.block_m, tiles.block_n
    head_dims = {"HEAD_DIM": constants["HEAD_DIM"], "HEAD_DIM_PAD": constants["HEAD_DIM_PAD"]}
    warps = {"num_warps": tiles.num_warps, "num_stages": tiles.num_stages}

    kernels.bwd_preprocess_kernel[(math.ceil(q_len / block_m), batch * q_heads)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), q_heads, q_len, BLOCK_M=block_m, **head_dims
    )
    # dK/dV owns a key tile of block_m rows and streams query tiles of block_n rows (FA2's shape)
    compiled = kernels.bwd_dkdv_kernel[(math.ceil(kv_len / block_m), batch * kv_heads)](
        q, k, v, grad_out, dk, dv, lse, delta, attention.valid_lens,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(dk), *_strides(dv),
        kv_heads, q_len, kv_len, attention.qk_scale, attention.scale,
        BLOCK_M=block_n, BLOCK_N=block_m, **warps, **constants,
    )  # fmt: skip
    attention.log_kernel("dkdv", Tiles(block_n, block_m, tiles.num_warps, tiles.num_stages), compiled)
    compiled = kernels.bwd_dq_kernel[(math.ceil(q_len / block_m), batch * q_heads)](
        q, k, v, grad_out, dq, lse, delta, attention.valid_lens,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(dq),
        q_heads, q_len, kv_len, attention.qk_scale, attention.scale,
        BLOCK_M=block_m, BLOCK_N=block_n, **warps, **constants,
    )  # fmt: skip
    attention.log_kernel("dq", tiles, compiled)
    return dq, dk, dv


class TritonFlash(Attention):
    """The problem's fixed launch settings (scale, tiles, masks as valid lengths) prepared once.

    forward_tiles None: autotuned on CUDA. `kernel` names the tiles each kernel last ran with, and
    its registers and spills where Triton reports them (compiled kernels; not the interpreter).
    """

    def __init__(self, problem: Problem, forward_tiles: Tiles | None, backward_tiles: Tiles) -> None:
        super().__init__(problem)
        self.forward_tiles, self.backward_tiles = forward_tiles, backward_tiles
        self.scale = 1.0 / math.sqrt(problem.head_dim)
        self.qk_scale = self.scale * math.log2(math.e)  # scores in base 2: exp2 is the fast instruction
        # no padding = every key valid; one int32 load per program keeps a single kernel for both cases
        self.valid_lens = torch.tensor(
            problem.kv_valid_lens or (problem.kv_len,) * problem.batch, dtype=torch.int32, device=problem.device
        )
        self.constants = {
            "HEAD_DIM": problem.head_dim,
            "HEAD_DIM_PAD": max(16, 1 << (problem.head_dim - 1).bit_length()),  # tl.dot needs K >= 16
            "GROUP": problem.group_size,
            "CAUSAL": problem.causal,
            "DOT_PRECISION": "ieee" if problem.dtype == "float32" else "tf32",  # tf32 is ignored for 16-bit
        }
        self.launched: dict[str, str] = {}

    def log_kernel(self, name: str, tiles: Tiles, compiled) -> None:
        self.launched[name] = f"{name} {_describe(tiles, compiled)}"
        self.kernel = "; ".join(self.launched.values())

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device_of(q):  # Triton launches on the current CUDA device; no-op on CPU
            return _TritonFlashFunction.apply(q, k, v, self)


def _availability(problem: Problem) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return f"triton is not installed; {INSTALL_HINT}"
    if problem.device_type == "cpu" and not _interpreting():
        return "triton_flash runs on CUDA (or on CPU under TRITON_INTERPRET=1, for tests)"
    if problem.head_dim > MAX_HEAD_DIM:
        return f"triton_flash supports head_dim up to {MAX_HEAD_DIM}, not {problem.head_dim}"
    return None


Tile = Annotated[int, OneOf(0, *TILE_SIZES)]  # 0: automatic
LaunchSetting = Annotated[int, AtLeast(0)]  # 0: automatic


@register(
    family="flash",
    exact=True,
    time="N^2",
    memory="N",
    devices=("cpu", "cuda"),
    dtypes=("float16", "bfloat16", "float32"),
    availability=_availability,
    oracle_hparams={"block_m": 16, "block_n": 16},
    decode="a prefill kernel (block_m query rows per program): a T-row step would fill one tile row; no decode kernel",
)
def triton_flash(
    problem: Problem,
    *,
    block_m: Tile = 0,
    block_n: Tile = 0,
    num_warps: LaunchSetting = 0,
    num_stages: LaunchSetting = 0,
) -> Attention:
    """FlashAttention 2 in Triton, written here: tiled online softmax forward, LSE-recomputing backward.

    block_m: query rows per forward/dQ tile and key rows per dK/dV tile; block_n: the other side.
    0 and 0 (default): the forward is autotuned on CUDA per (Nq, Nk, head dim, causal, group) over
    Hopper-sane tiles (64x64 under the interpreter), and the backward takes Triton's tutorial tiles
    (dK/dV: 128 keys x 32 queries, dQ: 128 queries x 32 keys, 4 warps, 5 stages; float32: 64-row tiles,
    2 stages). Set both to pin every kernel's tiles. num_warps, num_stages (with pinned tiles only):
    0 picks 4 warps (8 from 128x128 tiles) and 3 stages up to head_dim 64, else 2.
    """
    if (block_m == 0) != (block_n == 0):
        raise HyperparameterError(f"block_m={block_m} and block_n={block_n} are invalid: set both, or both 0")
    if block_m == 0:
        if num_warps or num_stages:
            raise HyperparameterError(
                f"num_warps={num_warps} and num_stages={num_stages} are invalid with automatic tiles: "
                "set block_m and block_n too, or leave both 0"
            )
        backward = Tiles(*BACKWARD_TILES["float32" if problem.dtype == "float32" else "16-bit"])
        forward = Tiles(*INTERPRETER_FORWARD_TILES) if _interpreting() else None
        return TritonFlash(problem, forward, backward)
    warps = num_warps or (8 if block_m * block_n >= 128 * 128 else 4)
    stages = num_stages or (3 if problem.head_dim <= 64 else 2)
    tiles = Tiles(block_m, block_n, warps, stages)
    return TritonFlash(problem, tiles, tiles)
