"""Ragged batches: each sequence's valid length drawn from a distribution, seeded, as varlen benchmarks draw them.

flash-attention's varlen benchmarks and FlashInfer's draw sequence lengths rather than padding every
sequence alike; `sweep.lengths` does the same for a padded batch of length N:
- uniform: each length uniform in [N/8, N] (the floor keeps every sequence worth batching);
- longtail: most sequences short, a few long: exponential with mean N/8, cut to [1, N];
- bimodal: alternately short (uniform in [1, N/8]) and long (uniform in [7N/8, N]).
The batch is always padded to N; `sweep.padding` (every sequence the same valid length) must be 0 with it.

Packed rows (`sweep.documents` = k > 1): k documents back to back in every row of N tokens, their lengths
cut at k - 1 distinct positions drawn uniformly from 1..N-1 (seeded), so each document has at least one token.
"""

from __future__ import annotations

import random

LENGTHS = ("uniform", "longtail", "bimodal")


def draw_lengths(distribution: str, seq_len: int, batch: int, seed: int) -> tuple[int, ...]:
    """`batch` valid lengths in 1..seq_len from the distribution, the same for the same (seed, seq_len, batch)."""
    rng = random.Random(f"{seed}/{distribution}/{seq_len}/{batch}")
    eighth = max(1, seq_len // 8)

    def one(index: int) -> float:
        if distribution == "uniform":
            return rng.uniform(eighth, seq_len)
        if distribution == "longtail":
            return rng.expovariate(1 / eighth)
        return rng.uniform(1, eighth) if index % 2 == 0 else rng.uniform(seq_len - eighth, seq_len)

    return tuple(min(seq_len, max(1, round(one(index)))) for index in range(batch))


def draw_documents(count: int, seq_len: int, seed: int) -> tuple[int, ...]:
    """`count` document lengths summing to seq_len, each >= 1, the same for the same (seed, seq_len, count)."""
    rng = random.Random(f"{seed}/documents/{seq_len}/{count}")
    cuts = sorted(rng.sample(range(1, seq_len), count - 1))
    return tuple(b - a for a, b in zip([0, *cuts], [*cuts, seq_len], strict=True))
