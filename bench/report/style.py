"""How each entry looks in every figure and table: one colour per entry, its peers beside it, a marker per family.

Derived from names only (never from the order of a report's rows), so an entry keeps its colour across
the figures of one report and across reports. Exact entries are drawn solid, approximate ones dashed;
a peer (a public package measured beside one of ours) takes its entry's colour, lighter, with hollow markers.
"""

from __future__ import annotations

import colorsys
import zlib

# the zoo's own entries; chosen so that entries people compare (full / linformer, sdpa_flash / sdpa_math,
# the two flex masks, performer / linear_attention) are far apart
ENTRY_COLOURS = {
    "full": "#222222", "sdpa_math": "#8c8c8c", "sdpa_flash": "#1f77b4", "sdpa_efficient": "#17becf",
    "sdpa_cudnn": "#5e3c99", "blockwise": "#8c564b", "triton_flash": "#e377c2", "xformers": "#bcbd22",
    "sliding_window": "#2ca02c", "window_global": "#00441b", "flex_sliding_window": "#ff7f0e",
    "flex_global": "#d62728", "linformer": "#9467bd", "performer": "#e6ab02", "linear_attention": "#a6761d",
    "bigbird": "#1b9e77", "nystromformer": "#e7298a", "reformer_lsh": "#66a61e", "transformer_xl": "#4d004b",
}  # fmt: skip
# each peer and the entry of ours it is measured beside (README, "Peers")
PEER_OF = {
    "peer_local_attention": "sliding_window", "peer_linformer": "linformer", "peer_performer": "performer",
    "peer_fla_linear_attention": "linear_attention", "peer_hf_bigbird": "bigbird",
    "peer_hf_nystromformer": "nystromformer", "peer_nystrom_attention": "nystromformer",
    "peer_hf_reformer": "reformer_lsh", "peer_reformer_pytorch": "reformer_lsh",
}  # fmt: skip
FAMILY_MARKERS = {"full": "o", "flash": "s", "sparse": "^", "low_rank": "D", "kernel": "v", "memory": "P"}
OTHER_MARKER = "X"
PEER_LIGHTEN = 0.35  # of the way to white


def home(impl: str) -> str:
    """The entry an impl is grouped with: its own name, or for a peer the entry it is measured beside."""
    return PEER_OF.get(impl, impl)


def entry_order(impl: str) -> tuple[str, int, str]:
    """A sort key that puts each peer right after its own entry."""
    return home(impl), impl != home(impl), impl


def _lighten(hex_colour: str, fraction: float) -> str:
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * fraction):02x}" for c in rgb)


def colour(impl: str) -> str:
    """The entry's colour as '#rrggbb': its own, its entry's lightened for a peer, else one hashed from the name."""
    if impl in ENTRY_COLOURS:
        return ENTRY_COLOURS[impl]
    if impl in PEER_OF:
        return _lighten(colour(PEER_OF[impl]), PEER_LIGHTEN)
    digest = zlib.crc32(impl.encode())  # a plug-in's entry: stable across runs and machines (hash() is salted)
    red, green, blue = colorsys.hsv_to_rgb((digest % 360) / 360, 0.55 + (digest >> 9) % 40 / 100, 0.75)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def series_colour(impl: str, setting: int, settings: int) -> str:
    """The colour of one hyperparameter setting of an impl: the entry's, lighter for each later setting."""
    return _lighten(colour(impl), 0.55 * setting / settings) if settings > 1 else colour(impl)


def marker(family: str) -> str:
    return FAMILY_MARKERS.get(family, OTHER_MARKER)


def is_peer(impl: str) -> bool:
    return impl in PEER_OF
