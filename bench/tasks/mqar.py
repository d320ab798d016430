"""Multi-query associative recall (MQAR), as Zoology defines it (Arora et al. 2023, arXiv:2312.04927).

A sequence of `input_seq_len` tokens opens with `num_kv_pairs` key-value pairs, `k1 v1 k2 v2 ...`: keys
drawn without replacement from 1..vocab/2-1, values without replacement from vocab/2..vocab-1. The rest
of the sequence is zeros, except that each key is asked once more: key i is placed at an even offset
2*g_i after the pairs, the gaps g_i drawn without replacement from 0..space-1 (space = (N - 2*pairs)/2)
with the power law p(g) ~ power_a * (g + 1) ** (power_a - 1), so most queries come soon after the pairs.
The label at a query's position is its key's value, -100 (ignored) everywhere else: a causal model
predicts the value at the query, having seen the pair once.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def gap_probabilities(space: int, power_a: float) -> torch.Tensor:
    """Zoology's power law over the gaps 0..space-1 (float64, sums to 1)."""
    ranks = torch.arange(1, space + 1, dtype=torch.float64)
    p = power_a * ranks ** (power_a - 1)
    return p / p.sum()


def check_task(vocab_size: int, seq_len: int, kv_pairs: int) -> str | None:
    """Why MQAR cannot be built with these sizes (Zoology's asserts, as one line), or None."""
    if seq_len % 2:
        return f"MQAR needs an even sequence length, not {seq_len}"
    if kv_pairs < 1 or 4 * kv_pairs > seq_len:
        return f"MQAR with N={seq_len} takes 1..{seq_len // 4} key-value pairs (4 * pairs <= N), not {kv_pairs}"
    if vocab_size // 2 - 1 < kv_pairs:
        return f"MQAR with vocab_size={vocab_size} has {vocab_size // 2 - 1} keys, fewer than {kv_pairs} pairs"
    return None


def multiquery_ar(
    num_examples: int, seq_len: int, kv_pairs: int, vocab_size: int, power_a: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels), both int64 (num_examples, seq_len); the same for the same arguments."""
    reason = check_task(vocab_size, seq_len, kv_pairs)
    if reason:
        raise ValueError(reason)
    generator = torch.Generator().manual_seed(seed)
    half = vocab_size // 2
    context = 2 * kv_pairs
    space = (seq_len - context) // 2

    def without_replacement(count: int, weights: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(weights.expand(num_examples, -1), count, replacement=False, generator=generator)

    keys = 1 + without_replacement(kv_pairs, torch.ones(half - 1))
    values = half + without_replacement(kv_pairs, torch.ones(vocab_size - half))
    gaps = without_replacement(kv_pairs, gap_probabilities(space, power_a))

    inputs = torch.zeros(num_examples, seq_len, dtype=torch.int64)
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    query_at = context + 2 * gaps  # (examples, pairs): where key i is asked again
    inputs.scatter_(1, query_at, keys)
    labels = torch.full_like(inputs, IGNORE_INDEX)
    labels.scatter_(1, query_at, values)  # the value is predicted at the query's own position
    return inputs, labels
