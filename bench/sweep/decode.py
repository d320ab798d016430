"""Measure one decode cell: build the cache or state from a context of L tokens (untimed), time one step of T tokens.

The cell's problem is the decode problem (q_len = T, kv_len = L + T, causal). No attention over the
context runs: the state is built from the context's k and v (for exact entries the cache is those
tensors), so a 64k context costs its copy, not minutes of attention. Its error against exact attention
is computed key chunk by key chunk in float64 (exact_decode), never with a float64 copy of the whole cache.
"""

from __future__ import annotations

import time
from typing import Any

import torch

import attention_zoo
from attention_zoo import Problem, error_metrics
from attention_zoo.inputs import Inputs
from attention_zoo.reference import expand_kv_heads
from bench.core.cell import Cell
from bench.core.memory import measure_peak
from bench.sweep.accuracy import needle_recall
from bench.sweep.timing import measured_columns, synchronize, timed_samples

REFERENCE_KEYS = 4096  # keys per float64 chunk of the exact reference


def exact_decode(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact float64 causal attention of the T new queries over L + T keys, by online softmax over key chunks."""
    steps, keys = problem.q_len, problem.kv_len
    q = q.double() / problem.head_dim**0.5
    row_max = torch.full((*q.shape[:3], 1), float("-inf"), dtype=torch.float64, device=q.device)
    row_sum, acc = torch.zeros_like(row_max), torch.zeros_like(q)
    position = torch.arange(keys - steps, keys, device=q.device)[:, None]  # (T, 1): bottom-right causal
    for start in range(0, keys, REFERENCE_KEYS):
        stop = min(start + REFERENCE_KEYS, keys)
        chunk_k, chunk_v = (expand_kv_heads(x[:, :, start:stop].double(), q.shape[1]) for x in (k, v))
        later = torch.arange(start, stop, device=q.device) > position  # (T, chunk): keys after the query
        scores = (q @ chunk_k.transpose(-1, -2)).masked_fill(later, -torch.inf)
        new_max = torch.maximum(row_max, scores.amax(-1, keepdim=True))
        rescale = (row_max - new_max).exp()
        probs = (scores - new_max).exp()
        row_sum = row_sum * rescale + probs.sum(-1, keepdim=True)
        acc = acc * rescale + probs @ chunk_v
        row_max = new_max
    return acc / row_sum


def measure_decode(cell: Cell, timing: dict[str, Any], inputs: Inputs) -> dict[str, Any]:
    """The measured columns of one decode cell: setup (build + state), step times, bytes, state size, error."""
    problem, device_type = cell.problem, cell.problem.device_type
    q, k, v = inputs.q, inputs.k, inputs.v  # q (B, Hq, T, D): the new queries; k, v (B, Hkv, L+T, D)
    context = problem.kv_len - problem.q_len
    k_new, v_new = k[:, :, context:], v[:, :, context:]

    started = time.perf_counter()
    impl = attention_zoo.get(cell.impl).build_decoder(problem, **cell.hparams)
    state = impl.decode_state(k[:, :, :context], v[:, :, :context])
    calls = 0
    while calls < timing["warmup_calls"] or time.perf_counter() - started < timing["warmup_s"]:
        impl.decode_step(q, k_new, v_new, state)
        calls += 1
    synchronize(device_type)
    setup_ms = (time.perf_counter() - started) * 1e3

    # every sample steps from the same state: a step leaves its input state as it was (attention_zoo/decode.py)
    step = lambda _: impl.decode_step(q, k_new, v_new, state)  # noqa: E731
    peak_bytes, (out, stepped) = measure_peak(device_type, lambda: step(None))
    state_bytes = stepped.nbytes  # what the step read: the state with its own T tokens in it
    with torch.no_grad():
        error = error_metrics(out, exact_decode(problem, q, k, v))
        error["needle_recall"] = needle_recall(out, v, inputs.needles, problem.allowed_mask())
    del out, stepped
    samples = timed_samples(device_type, timing, lambda: None, step)
    return {
        **measured_columns(setup_ms, samples, peak_bytes, impl.kernel),
        "bytes_read": state_bytes + q.nbytes,
        "state_bytes": state_bytes // problem.batch,
        **error,
    }
