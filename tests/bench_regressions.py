"""Test-only regressions for `python -m bench.check`, injected by importing this module (`--zoo-import`).

It rebuilds three registered entries in place, as a bad change to their code would:
- linformer gets 40% slower: each call spins for 0.4 of its own CPU time after computing (the suite
  times thread CPU time, bench/check/suite.py). Four times the 10% time tolerance: between processes an
  unchanged entry's time / ref moved by up to 11%, and a 20% injection read +2-4% at two of its N once;
- full uses twice the memory: a buffer as large as its scores and probabilities is held during each call;
- sliding_window turns quadratic: it computes its band through a dense N x N masked attention
  (its own float64 dense form), the naive implementation; the output is unchanged.
"""

import dataclasses
import functools
import time

import torch

from attention_zoo import Attention, Problem, registry

SLOWDOWN = 0.40


class Injected(Attention):
    """The registered entry's own implementation, wrapped by a regression."""

    def __init__(self, problem: Problem, inner: Attention) -> None:
        super().__init__(problem)
        self.inner = inner


class Slower(Injected):
    def forward(self, q, k, v):
        begin = time.thread_time()
        out = self.inner(q, k, v)
        until = time.thread_time() + SLOWDOWN * (time.thread_time() - begin)
        while time.thread_time() < until:
            pass
        return out


class Hungrier(Injected):
    def forward(self, q, k, v):
        p = self.problem
        held = torch.ones(2 * p.batch * p.q_heads * p.q_len * p.kv_len, dtype=q.dtype)  # scores + probabilities
        out = self.inner(q, k, v)
        del held
        return out


class Dense(Injected):
    def forward(self, q, k, v):
        return self.inner.dense_reference(q, k, v).to(q.dtype)


def _inject(name: str, wrapper: type[Injected]) -> None:
    entry = registry.get(name)

    @functools.wraps(entry.builder)  # keeps the builder's signature: its hyperparameters
    def build(problem: Problem, **hparams) -> Attention:
        return wrapper(problem, entry.builder(problem, **hparams))

    registry._REGISTRY[name] = dataclasses.replace(entry, builder=build)


for _name, _wrapper in {"linformer": Slower, "full": Hungrier, "sliding_window": Dense}.items():
    _inject(_name, _wrapper)
