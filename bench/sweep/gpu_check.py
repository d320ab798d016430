"""The steps of scripts/gpu_check.sh, the prepared validation run on a GPU: `python -m bench.sweep.gpu_check STEP OUT`.

Each step is its own process, so no step holds a CUDA context while another measures. GPU_CHECK_DEVICE=cpu
runs every step on the CPU at tiny sizes (the dry run CI makes), printing each CUDA-only skip with its reason.
Steps: versions (torch, CUDA, cuDNN, Triton, xformers and whether its kernels load), sweep (the trimmed
sweep=gpu into OUT/rows.csv, and full vs sdpa_flash peak memory into OUT/memory_rows.csv), do_bench (the
harness's median for sdpa_flash at N = 4k against triton.testing.do_bench on the same call), report
(OUT/report.md from what the others wrote).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.rows import ROWS_CSV
from bench.sweep.run import ENVIRONMENT_JSON

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
DTYPE = "bfloat16" if ON_GPU else "float32"  # a CPU's bf16 GEMM ceiling alone takes tens of seconds
IMPLS = ["sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "triton_flash", "blockwise", "full", "flex_sliding_window",
         "xformers"]  # fmt: skip
# the trimmed sweep=gpu; the dry run keeps its shape at sizes a 2-core CPU runs in seconds
SWEEP = {"seq_lens": [1024, 4096, 16384], "head_dims": [64, 128], "heads": 16} if ON_GPU else {
    "seq_lens": [64], "head_dims": [16], "heads": 2}  # fmt: skip
MEMORY_SEQ_LENS = [2048, 4096] if ON_GPU else [64, 128]  # FlashAttention's README: ~10x and ~20x less than full
DO_BENCH_PROBLEM = {"q_len": 4096, "q_heads": 16, "head_dim": 64} if ON_GPU else {"q_len": 64, "q_heads": 2,
                                                                                   "head_dim": 16}  # fmt: skip
DO_BENCH_TARGET_PCT = 3.0


def cuda_only(step: str, reason: str) -> None:
    print(f"SKIP (CUDA-only) {step}: {reason}", flush=True)


def versions(out: Path) -> None:
    """Print the versions the figures depend on, and whether xformers' CUDA kernels load."""
    import torch

    import attention_zoo as z
    from bench.sweep.environment import device_environment

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version()}")  # fmt: skip
    for module in ("triton", "xformers", "hydra", "omegaconf", "local_attention", "linformer", "performer_pytorch"):
        try:
            print(f"{module} {getattr(importlib.import_module(module), '__version__', '(no __version__)')}")
        except ImportError as error:
            print(f"{module} MISSING: {error}")
    if not ON_GPU:
        cuda_only("device columns, xformers kernels", f"GPU_CHECK_DEVICE={DEVICE}")
        return
    print(json.dumps(device_environment(DEVICE), indent=1, default=str))
    from attention_zoo.impls.xformers_attention import extension_note

    print(f"xformers C++/CUDA extension loaded: {extension_note() == ''}{extension_note()}")
    problem = z.Problem(q_heads=4, kv_heads=2, q_len=256, head_dim=128, causal=True, dtype="bfloat16", device=DEVICE)
    for mode in ("forward", "backward"):
        print(f"xformers {mode} on a bf16 GQA causal problem: {z.get('xformers').unsupported_reason(problem, mode)}")


def _bench(run_dir: Path, overrides: list[str]) -> None:
    """One `python -m bench` run (the CLI, as a user runs it) into run_dir, a line per finished cell in the log."""
    command = [sys.executable, "-m", "bench", *overrides, "report=false", "progress=true", f"hydra.run.dir={run_dir}"]
    if "GPU_CHECK_TIMING_LOCK" in os.environ:  # the dry run's own lock, apart from other jobs on the CI machine
        command.append(f"timing_lock={os.environ['GPU_CHECK_TIMING_LOCK']}")
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _bench_into(out: Path, kept: dict[str, str], overrides: list[str]) -> None:
    """A `python -m bench` run whose files named in `kept` land in OUT under their new names (the rows
    finished so far too when it fails or is interrupted)."""
    run_dir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        _bench(run_dir, overrides)
    finally:
        for name, new_name in kept.items():
            if (run_dir / name).exists():
                shutil.copy(run_dir / name, out / new_name)


def sweep(out: Path) -> None:
    """Full vs sdpa_flash peak memory into OUT/memory_rows.csv (four cells, first), then the trimmed sweep=gpu
    into OUT/rows.csv."""
    seq_lens = ",".join(map(str, MEMORY_SEQ_LENS))
    _bench_into(out, {ROWS_CSV: "memory_rows.csv"},
                ["sweep=gpu", "impls.patterns=[full,sdpa_flash]", f"sweep.seq_lens=[{seq_lens}]",
                 f"sweep.heads={SWEEP['heads']}", f"sweep.head_dims={SWEEP['head_dims'][0]}", "sweep.causal=false",
                 "sweep.modes=fwd", f"sweep.devices={DEVICE}", f"sweep.dtypes={DTYPE}", "timing=smoke"])  # fmt: skip
    axes = [f"sweep.{axis}={json.dumps(value).replace(' ', '')}" for axis, value in SWEEP.items()]
    _bench_into(out, {ROWS_CSV: ROWS_CSV, ENVIRONMENT_JSON: ENVIRONMENT_JSON},
                ["sweep=gpu", f"impls.patterns=[{','.join(IMPLS)}]", *axes, f"sweep.dtypes={DTYPE}",
                 f"sweep.devices={DEVICE}", "timing=smoke"])  # fmt: skip


def do_bench(out: Path) -> None:
    """sdpa_flash's forward at N = 4k: the harness's median (timing=quick) against triton.testing.do_bench's."""
    import attention_zoo as z
    from bench.core.cell import Cell
    from bench.sweep.config import compose_config
    from bench.sweep.measure import cell_inputs, measure_cell

    problem = z.Problem(**DO_BENCH_PROBLEM, dtype=DTYPE, device=DEVICE)
    timing = dict(compose_config(["timing=quick"]).timing)
    harness_ms = measure_cell(Cell("sdpa_flash", problem, "fwd", {}, 0.0), timing, seed=0)["time_ms_median"]
    print(f"harness median, sdpa_flash fwd {DO_BENCH_PROBLEM}: {harness_ms:.4f} ms")
    result = {"problem": DO_BENCH_PROBLEM, "harness_ms": harness_ms}
    if not ON_GPU:
        cuda_only("do_bench", "triton.testing.do_bench times CUDA events")
    else:
        import triton.testing

        impl = z.get("sdpa_flash").build(problem)
        q, k, v = cell_inputs(problem, seed=0, requires_grad=False)
        do_bench_ms = triton.testing.do_bench(lambda: impl(q, k, v), return_mode="median")
        difference = 100 * (harness_ms - do_bench_ms) / do_bench_ms
        verdict = "within" if abs(difference) <= DO_BENCH_TARGET_PCT else "OUTSIDE"
        print(f"do_bench median: {do_bench_ms:.4f} ms; harness - do_bench = {difference:+.2f}% "
              f"({verdict} the {DO_BENCH_TARGET_PCT:g}% target)")  # fmt: skip
        result.update(do_bench_ms=do_bench_ms, difference_pct=difference)
    (out / "do_bench.json").write_text(json.dumps(result, indent=1))


def report(out: Path) -> None:
    """OUT/report.md: every cell one row, statuses, TFLOP/s against the GEMM rate, peak memory, do_bench."""
    import pandas as pd

    from bench.sweep.config import compose_config

    lines = ["# GPU check", ""]
    rows = pd.read_csv(out / "rows.csv") if (out / "rows.csv").exists() else pd.DataFrame()
    axes = [f"sweep.{axis}={json.dumps(value).replace(' ', '')}" for axis, value in SWEEP.items()]
    from bench.sweep import cases

    expected = len(cases.expand(compose_config(["sweep=gpu", f"impls.patterns=[{','.join(IMPLS)}]", *axes,
                                                f"sweep.dtypes={DTYPE}", f"sweep.devices={DEVICE}"])))  # fmt: skip
    distinct = rows["cell_id"].nunique() if len(rows) else 0
    lines += [f"Cells: {len(rows)} rows of {expected} expected, {distinct} distinct", ""]
    if len(rows):
        lines += ["## Status per entry", "", rows.pivot_table(index="impl", columns="status", values="cell_id",
                                                            aggfunc="count", fill_value=0).to_string(), ""]  # fmt: skip
        gemm = rows["gemm_flop_per_s"].dropna()
        lines += [f"{DTYPE} GEMM ceiling: {gemm.iloc[0] / 1e12:.1f} TFLOP/s (size {rows['gemm_size'].iloc[0]})"
                  if len(gemm) else f"{DTYPE} GEMM ceiling: not measured", ""]  # fmt: skip
        long = rows["seq_len"] >= min(4096, rows["seq_len"].max())  # the dry run's tiny N stand in for 4k
        fast = rows[(rows["status"] == "ok") & (rows["mode"] == "fwd") & long
                    & rows["impl"].isin(["sdpa_flash", "triton_flash"])]  # fmt: skip
        columns = ["impl", "seq_len", "head_dim", "causal", "time_ms_median", "pct_of_gemm", "kernel"]
        lines += ["## Forward at N >= 4k (targets: sdpa_flash >= 50%, triton_flash >= 40% of GEMM)", "",
                  fast.assign(tflop_per_s=fast["flop_per_s"] / 1e12)[[*columns, "tflop_per_s"]].to_string(
                      index=False), ""]  # fmt: skip
        failed = rows[~rows["status"].isin(["ok", "unsupported"])]
        lines += ["## Not ok and not unsupported", "",
                  failed[["impl", "seq_len", "head_dim", "causal", "mode", "status", "reason"]].to_string(index=False)
                  if len(failed) else "none", ""]  # fmt: skip
        lines += ["## Kernels that ran", "", rows[rows["kernel"].notna()].drop_duplicates(["impl", "kernel"])[
            ["impl", "head_dim", "causal", "mode", "kernel"]].to_string(index=False), ""]  # fmt: skip
    if (out / "memory_rows.csv").exists():
        memory = pd.read_csv(out / "memory_rows.csv").pivot_table(index="seq_len", columns="impl", values="peak_bytes")
        if {"full", "sdpa_flash"} <= set(memory.columns):
            memory["full / sdpa_flash"] = memory["full"] / memory["sdpa_flash"]
        lines += ["## Peak memory, forward (FlashAttention's README: about 10x less at 2k, 20x at 4k)", "",
                  memory.to_string(), ""]  # fmt: skip
    if (out / "do_bench.json").exists():
        lines += ["## Harness vs do_bench (target: within 3%)", "", "```", (out / "do_bench.json").read_text(), "```"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


STEPS = {"versions": versions, "sweep": sweep, "do_bench": do_bench, "report": report}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in STEPS:
        print(f"usage: python -m bench.sweep.gpu_check {{{','.join(STEPS)}}} OUT_DIR", file=sys.stderr)
        sys.exit(2)
    STEPS[sys.argv[1]](Path(sys.argv[2]))
