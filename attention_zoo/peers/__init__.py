"""Public attention packages behind our interface, one file per family, so one sweep measures theirs against ours."""

# every peer module is imported explicitly; importing one registers its entries
from attention_zoo.peers import (  # noqa: F401
    bigbird,
    linear_attention,
    linformer,
    local_attention,
    nystromformer,
    performer,
    reformer,
)
