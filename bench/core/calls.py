"""What is timed in each benchmark mode: the (prepare, run) pair of calls on one built implementation.

Apart from bench/sweep/measure.py, because the regression suite imports it on the base side of a same-host
A/B (bench/check/same_host.py), where only the zoo API written down in README is there to rely on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def mode_calls(impl: torch.nn.Module, q, k, v, mode: str) -> tuple[Callable[[], Any], Callable[[Any], torch.Tensor]]:
    """(prepare, run) for a mode: only run is timed, and it returns the forward output.

    fwd: run is the forward (inputs do not require grad). bwd: prepare does the forward, run only
    out.backward(grad_out). fwd_bwd: run does both. Gradients are cleared in prepare, untimed.
    """
    if mode == "fwd":
        return (lambda: None), (lambda _: impl(q, k, v))
    grad_out = torch.randn_like(q)

    def clear_grads() -> None:
        for x in (q, k, v):
            x.grad = None

    def forward_then_backward(_: Any) -> torch.Tensor:
        out = impl(q, k, v)
        out.backward(grad_out)
        return out

    def backward(out: torch.Tensor) -> torch.Tensor:
        out.backward(grad_out)
        return out

    if mode == "bwd":
        return (lambda: (clear_grads(), impl(q, k, v))[1]), backward
    return clear_grads, forward_then_backward
