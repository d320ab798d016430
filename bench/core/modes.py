"""The benchmark modes, in one table: the passes each times, the passes it runs, and so its FLOPs.

fwd times the forward; bwd runs the forward untimed and times the backward; fwd_bwd times both
(bench/core/calls.py builds the calls). The registry answers availability and FLOPs per pass
("forward", "backward": a backward is 2.5 forwards), so a mode needs the passes it runs (a backward
needs its forward) and its FLOPs are those of the passes it times. Here, in bench, not in the zoo: the
regression suite runs against an older commit's attention_zoo too, through the zoo API README lists.
"""

from __future__ import annotations

from dataclasses import dataclass

PASSES = ("forward", "backward")  # the registry's


@dataclass(frozen=True)
class Mode:
    """A benchmark mode: the registry passes inside its timed call."""

    timed: tuple[str, ...]

    @property
    def passes(self) -> tuple[str, ...]:
        """The passes the mode runs, timed or not: a backward needs its forward first."""
        return PASSES if "backward" in self.timed else ("forward",)


# decode: one forward step of T new tokens against a cache or state built from a context
# (attention_zoo/decode.py); its FLOPs and availability come from the entry's decode path.
# recall: trains a tiny model on MQAR with the entry as its attention (bench/tasks), and times the entry's
# forward and backward at the model's shape, as fwd_bwd does
MODES = {
    "fwd": Mode(("forward",)),
    "bwd": Mode(("backward",)),
    "fwd_bwd": Mode(PASSES),
    "decode": Mode(()),
    "recall": Mode(PASSES),
}
