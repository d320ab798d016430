"""Decode steps: the state an entry builds from a context of L tokens, and the caches the steps share.

A decode problem is `Problem(q_len=T, kv_len=L + T, causal=True)`: T new queries (T = 1, or a few for
speculative decoding) at positions L .. L+T-1 against every key up to their own, which is bottom-right
causal attention. An entry that decodes (`register(decode=True)`) implements two methods on its built
Attention: `decode_state(k, v)` builds the cache or recurrent state from the context's keys and values
(B, Hkv, L, D) without attending over the context, and `decode_step(q, k, v, state)` takes the step's
q (B, Hq, T, D) and its own new k, v (B, Hkv, T, D) and returns (out, the updated state).

A step never changes what its input state holds: caches append in place past their length, into room
the input state does not count, so stepping twice from one state gives the same answer (the timing
loop does so). `nbytes` is what the state holds, all of which the step reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch


class DecodeState(Protocol):
    """What a decode step reads and returns: a position (tokens seen) and the bytes it holds."""

    position: int

    @property
    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class KVCache:
    """Keys and values of positions begin .. end-1, held in buffers (B, Hkv, capacity, D) with room to append."""

    k_buffer: torch.Tensor
    v_buffer: torch.Tensor
    position: int  # tokens seen: the position the next key will have
    begin: int = 0  # the first cached position (a bounded memory drops the oldest)
    offset: int = 0  # buffer index of position `begin`

    @classmethod
    def from_context(cls, k: torch.Tensor, v: torch.Tensor, room: int) -> KVCache:
        """A cache of the context's keys and values (B, Hkv, L, D), with room for `room` more positions."""
        return cls(_with_room(k, room), _with_room(v, room), k.shape[2])

    @property
    def keys(self) -> torch.Tensor:
        return self.k_buffer[:, :, self.offset : self.offset + self.position - self.begin]

    @property
    def values(self) -> torch.Tensor:
        return self.v_buffer[:, :, self.offset : self.offset + self.position - self.begin]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def append(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """The cache with the step's keys and values (B, Hkv, T, D) after it: written in place past its length,
        into a larger buffer (the kept positions copied once) when the room has run out."""
        start, steps = self.offset + self.position - self.begin, k.shape[2]
        cache = self
        if start + steps > self.k_buffer.shape[2]:
            room = max(steps, self.position - self.begin)  # doubling: amortised O(1) copies per position
            cache = KVCache(_with_room(self.keys, room), _with_room(self.values, room), self.position, self.begin)
            start = self.position - self.begin
        cache.k_buffer[:, :, start : start + steps] = k
        cache.v_buffer[:, :, start : start + steps] = v
        return dataclasses.replace(cache, position=self.position + steps)

    def keep_from(self, begin: int) -> KVCache:
        """The cache without positions before `begin` (no copy: the view starts later)."""
        begin = max(begin, self.begin)
        return dataclasses.replace(self, begin=begin, offset=self.offset + begin - self.begin)


def _with_room(x: torch.Tensor, room: int) -> torch.Tensor:
    """x (B, H, N, D) copied into a buffer of N + room positions."""
    buffer = x.new_empty(*x.shape[:2], x.shape[2] + room, x.shape[3])
    buffer[:, :, : x.shape[2]] = x
    return buffer


@dataclass(frozen=True)
class RecurrentState:
    """A bounded state of sums over every key seen (linear attention, Performer): its size is fixed in L."""

    sums: torch.Tensor  # (B, Hkv, features, D + 1): sum_j phi(k_j) [v_j, 1]^T
    position: int
    stabiliser: torch.Tensor | None = None  # Performer's per-feature max exponent, (B, Hkv, 1, features)

    @property
    def nbytes(self) -> int:
        return self.sums.nbytes + (0 if self.stabiliser is None else self.stabiliser.nbytes)


def new_token_mask(steps: int, device: torch.device | str) -> torch.Tensor:
    """bool (T, T), True = attend: new query t sees new keys s <= t (the keys before the step it sees whole)."""
    return torch.ones(steps, steps, dtype=torch.bool, device=device).tril_()


def step_bias(steps: int, keys: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor | None:
    """Additive (T, keys) mask for T new queries against `keys` keys whose last T are the new ones; None at T = 1."""
    if steps == 1:
        return None
    allowed = torch.ones(steps, keys, dtype=torch.bool, device=device)
    allowed[:, keys - steps :] = new_token_mask(steps, device)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))


def grouped_queries(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """q (B, Hq, T, D) -> (B, Hkv, G*T, D): the G query heads of a key/value head stacked on the query axis."""
    batch, q_heads, steps, head_dim = q.shape
    return q.reshape(batch, kv_heads, (q_heads // kv_heads) * steps, head_dim)


@dataclass(frozen=True)
class RingCache:
    """A sliding window's cache: the last `capacity` positions in a ring (position p in slot p % capacity),
    plus the first g positions (global tokens), which every later query attends. Its size is fixed in L."""

    k_ring: torch.Tensor  # (B, Hkv, capacity, D)
    v_ring: torch.Tensor
    k_global: torch.Tensor  # (B, Hkv, g, D); slots past the position are unwritten and never attended
    v_global: torch.Tensor
    position: int

    @classmethod
    def from_context(cls, k: torch.Tensor, v: torch.Tensor, capacity: int, global_tokens: int) -> RingCache:
        """The ring of the context's last `capacity` positions and its first `global_tokens` keys."""
        shape = (*k.shape[:2], capacity, k.shape[3])
        empty = cls(k.new_zeros(shape), v.new_zeros(shape), k.new_zeros(*shape[:2], global_tokens, shape[3]),
                    v.new_zeros(*shape[:2], global_tokens, shape[3]), 0)  # fmt: skip
        return empty.append(k[:, :, -capacity:], v[:, :, -capacity:], max(0, k.shape[2] - capacity))._globals(k, v)

    def _globals(self, k: torch.Tensor, v: torch.Tensor) -> RingCache:
        held = min(self.k_global.shape[2], k.shape[2])
        self.k_global[:, :, :held], self.v_global[:, :, :held] = k[:, :, :held], v[:, :, :held]
        return self

    def append(self, k: torch.Tensor, v: torch.Tensor, first: int | None = None) -> RingCache:
        """The ring with keys and values (B, Hkv, T, D) of positions first .. first+T-1 (default: the next T)
        written into their slots, in place: the slots of positions older than any later query can see."""
        first = self.position if first is None else first
        positions = torch.arange(first, first + k.shape[2], device=k.device)
        slots = positions % self.k_ring.shape[2]
        self.k_ring[:, :, slots], self.v_ring[:, :, slots] = k, v
        g = self.k_global.shape[2]
        if first < g:  # global tokens among them
            held = slice(first, min(g, first + k.shape[2]))
            self.k_global[:, :, held], self.v_global[:, :, held] = (
                k[:, :, : held.stop - first],
                v[:, :, : held.stop - first],
            )
        return dataclasses.replace(self, position=first + k.shape[2])

    def slot_positions(self) -> torch.Tensor:
        """(capacity,) the position each slot holds: the latest one before `position` (negative: none yet)."""
        capacity, last = self.k_ring.shape[2], self.position - 1
        slots = torch.arange(capacity, device=self.k_ring.device)
        return last - (last - slots) % capacity

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in (self.k_ring, self.v_ring, self.k_global, self.v_global))
