"""The heap policies a CPU cell's timed calls can run on, by name (timing.heap; the first is the default).

resident: no block mapped, nothing trimmed, so timed calls reuse pages already faulted in; mapped: every
block of 64 KiB or more mapped and faulted in afresh at every call, what a process pays when nothing is reused.
bench/core/memory.py applies them; the names live here, without torch, for the config to check.
"""

from __future__ import annotations

TIMING_HEAPS = ("resident", "mapped")
