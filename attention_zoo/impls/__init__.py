"""Our implementations, one file per family; importing this package registers every entry."""

# every family is imported explicitly; importing a module registers its entries
from attention_zoo.impls import (  # noqa: F401
    bigbird,
    blockwise,
    flex,
    full,
    linear_attention,
    linformer,
    nystromformer,
    performer,
    reformer,
    sdpa,
    sparse,
    transformer_xl,
    triton_flash,
    xformers_attention,
)
