"""Attention Zoo: attention implementations behind one interface, with a float64 oracle.

import attention_zoo as z
problem = z.Problem(batch=1, q_heads=8, q_len=1024, head_dim=64, causal=True)
impl = z.get("blockwise").build(problem)
out = impl(*problem.make_inputs())

Names load when first used (PEP 562), and the families register at the registry's first lookup
(`get`, `list_impls`): importing the torch-free parts (rules, errors, modes, complexity) loads neither
torch nor any implementation.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module defining it
_EXPORTS = {
    "AtLeast": "rules",
    "AtMost": "rules",
    "OneOf": "rules",
    "Attention": "interface",
    "Entry": "registry",
    "HyperparameterError": "errors",
    "Problem": "problem",
    "ProblemError": "errors",
    "UnknownImplError": "errors",
    "UnsupportedError": "errors",
    "dense_attention": "reference",
    "error_metrics": "reference",
    "get": "registry",
    "list_impls": "registry",
    "register": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """A public name from the module defining it, or a submodule (`attention_zoo.registry`)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"attention_zoo.{_EXPORTS[name]}"), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f"attention_zoo.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"attention_zoo.{name}":
                raise  # the submodule exists and one of its own imports failed
            raise AttributeError(f"module 'attention_zoo' has no attribute {name!r}") from None
    else:
        raise AttributeError(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
