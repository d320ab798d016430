"""The benchmark modes, in one table: the passes each times, the passes it needs, and its FLOPs.

fwd times the forward; bwd runs the forward untimed and times the backward; fwd_bwd times both. The
registry answers availability per pass ("forward", "backward"), so a mode needs the passes it runs
(a backward needs its forward). FLOPs are counted per forward pass; a backward is 2.5 forwards (two
GEMMs for dQ/dK/dV and dP on top of the recomputed scores, as FlashAttention counts it). Entry.flops
also takes the registry's spelling of a mode ("forward", "backward", "forward_backward"). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

PASSES = ("forward", "backward")
PASS_FLOP_FACTOR = {"forward": 1.0, "backward": 2.5}


@dataclass(frozen=True)
class Mode:
    """A benchmark mode: the passes inside its timed call."""

    timed: tuple[str, ...]

    @property
    def passes(self) -> tuple[str, ...]:
        """The passes the mode runs, timed or not: a backward needs its forward first."""
        return PASSES if "backward" in self.timed else ("forward",)

    @property
    def flop_factor(self) -> float:
        """FLOPs of the timed call, in multiples of one forward pass."""
        return sum(PASS_FLOP_FACTOR[p] for p in self.timed)


MODES = {"fwd": Mode(("forward",)), "bwd": Mode(("backward",)), "fwd_bwd": Mode(PASSES)}
REGISTRY_SPELLING = {"forward": "fwd", "backward": "bwd", "forward_backward": "fwd_bwd"}


def mode_of(name: str) -> Mode:
    """The mode a name means, in the bench's spelling or the registry's; ValueError (one line) for anything else."""
    key = REGISTRY_SPELLING.get(name, name)
    if key not in MODES:
        allowed = ", ".join([*MODES, *REGISTRY_SPELLING])
        raise ValueError(f"mode {name!r} is unknown: allowed are {allowed}")
    return MODES[key]
