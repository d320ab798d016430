"""The CPU flash-decoding kernel (decode_kernel.c), compiled at first use with the machine's C compiler.

The library is built for the host it runs on (`-march=native`) into a cache directory
(`$ATTENTION_ZOO_CACHE`, default `~/.cache/attention_zoo`) under a name that hashes the source, the
flags, the compiler and the CPU's feature flags, so a checkout shared by different hosts never loads a
library built for another CPU. It is loaded through ctypes: no torch headers, a compile of about a second.
Where no compiler works, `unavailable()` says why and blockwise's decode step runs its PyTorch split-K path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("decode_kernel.c")
# -ffast-math lets the dot products and exp vectorise; it is given to the compile step only, because linking a
# shared library with it would set flush-to-zero for the whole process (crtfastmath.o)
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC", "-pthread")
LINK_FLAGS = ("-shared", "-pthread")
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_ARGTYPES = [ctypes.c_void_p] * 4 + [ctypes.c_int] + [ctypes.c_int64] * 7


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _cpu_flags() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line for line in lines if line.startswith(("flags", "Features"))), platform.processor())


def _cache_dir() -> Path:
    return Path(os.environ.get("ATTENTION_ZOO_CACHE", Path.home() / ".cache" / "attention_zoo"))


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The loaded library, or why it cannot be had."""
    compiler = _compiler()
    if compiler is None:
        return "no C compiler (cc or gcc, or $CC) to build the CPU decode kernel"
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = "\0".join([SOURCE.read_text(), *COMPILE_FLAGS, *LINK_FLAGS, version, platform.machine(), _cpu_flags()])
    target = _cache_dir() / f"decode_kernel-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as work:
                obj, lib = Path(work, "decode_kernel.o"), Path(work, "decode_kernel.so")
                for command in (
                    [compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(obj)],
                    [compiler, *LINK_FLAGS, str(obj), "-o", str(lib), "-lm"],
                ):
                    built = subprocess.run(command, capture_output=True, text=True)
                    if built.returncode != 0:
                        said = built.stderr.strip().splitlines() or [f"exit {built.returncode}"]
                        return f"the CPU decode kernel did not build: {said[-1]}"
                os.replace(lib, target)  # atomic: concurrent builders each install a whole library
        except OSError as error:
            return f"the CPU decode kernel could not be built into {target.parent}: {error}"
    library = ctypes.CDLL(str(target))
    library.az_decode_step.restype = ctypes.c_int
    library.az_decode_step.argtypes = _ARGTYPES
    return library


def unavailable(dtype: torch.dtype, device: torch.device | str) -> str | None:
    """Why the kernel cannot run a step of this dtype on this device, or None."""
    if torch.device(device).type != "cpu":
        return "the decode kernel runs on the CPU"
    if dtype not in DTYPE_CODES:
        return f"the decode kernel reads float32, bfloat16 and float16 caches, not {dtype}"
    library = _library()
    return library if isinstance(library, str) else None


def _units(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x (B, H, n, D) with rows of D contiguous and (batch, head) units one stride apart, and that stride."""
    batch, heads, _, dim = x.shape
    if x.stride(3) != 1 or x.stride(2) != dim or (batch > 1 and heads > 1 and x.stride(0) != heads * x.stride(1)):
        x = x.contiguous()
    return x, x.stride(1) if heads > 1 else x.stride(0)


def flash_decode(q_rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, steps: int) -> torch.Tensor:
    """softmax(q k^T) v of q_rows (B, Hkv, G*T, D), float32 and scaled, against keys and values (B, Hkv, L+T, D)
    whose last T are the step's own (row g*T + t sees them up to its own), in float32 (B, Hkv, G*T, D)."""
    library = _library()
    if isinstance(library, str):
        raise RuntimeError(library)
    batch, kv_heads, rows, dim = q_rows.shape
    q_rows = q_rows.contiguous()
    (keys, k_stride), (values, v_stride) = _units(keys), _units(values)
    if k_stride != v_stride:
        keys, values = keys.contiguous(), values.contiguous()
        k_stride = keys.stride(1)
    out = torch.empty_like(q_rows)
    status = library.az_decode_step(
        q_rows.data_ptr(), keys.data_ptr(), values.data_ptr(), out.data_ptr(), DTYPE_CODES[keys.dtype],
        batch * kv_heads, rows, keys.shape[2], dim, steps, k_stride, torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError("the CPU decode kernel could not allocate its buffers or start its threads")
    return out
