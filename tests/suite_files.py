"""Suite JSON files made up for the check's tests: known effects under lognormal noise, as the suite writes them."""

import json

import numpy as np

from bench.check import baseline
from bench.check import runs as suite_runs
from bench.check.suite import METHOD

SEQ_LENS = (256, 512, 1024, 2048)
ROUNDS = 15
NOISE = 0.04  # lognormal sigma of one round's ratio
HOST = baseline.host_machine()  # suite files made here are from this host unless a test says otherwise


def suite_file(folder, entries, seed, name=suite_runs.SUITE_JSON, method=METHOD, reference_ms=2.0, host=HOST):
    """A suite JSON: entries maps impl -> (time exponent, ms at N=256, peak-bytes exponent, bytes at 256, slowdown)."""
    rng = np.random.default_rng(seed)
    benchmarks = []
    for impl, (time_exp, ms, mem_exp, peak, slowdown) in entries.items():
        for n in SEQ_LENS:
            scale = n / SEQ_LENS[0]
            reference_samples = reference_ms * rng.lognormal(0, NOISE, ROUNDS)
            ratio = ms * scale**time_exp * slowdown * rng.lognormal(0, NOISE, ROUNDS) / 2.0
            benchmarks.append(
                {
                    "fullname": f"benchmarks/test_regression.py::test_attention[{impl}-fwd-N{n}]",
                    "extra_info": {
                        "impl": impl, "mode": "fwd", "seq_len": n, "causal": False, "hparams": {"window": 32},
                        "declared_time_exponent": 1.0 if impl.startswith("lin") else 2.0,
                        "declared_memory_exponent": 1.0 if impl.startswith("lin") else 2.0,
                        "reference_ms": reference_samples.tolist(), "peak_bytes": int(peak * scale**mem_exp),
                        "waited_s": 0.0,
                    },
                    "stats": {"data": (ratio * reference_samples / 1e3).tolist()},
                }
            )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    machine = {**host, "suite_method": method}
    saved = {"machine_info": machine, "commit_info": {"id": "abc", "dirty": False}, "benchmarks": benchmarks}
    (folder / name).write_text(json.dumps(saved))
    return folder


HEALTHY = {
    "lin_a": (1.0, 1.0, 1.0, 4 * 2**20, 1.0),
    "lin_b": (1.0, 3.0, 1.0, 8 * 2**20, 1.0),
    "quad": (2.0, 2.0, 2.0, 16 * 2**20, 1.0),
}


def make_baseline(tmp_path, runs=3):
    """A baseline folder of `runs` healthy suite runs, as --refresh-baseline names them."""
    folder = tmp_path / "base"
    for run in range(runs):
        name = "benchmark.json" if run == 0 else f"benchmark-{run + 1}.json"
        suite_file(folder, HEALTHY, seed=100 + run, name=name)
    return folder
