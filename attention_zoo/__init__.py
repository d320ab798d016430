"""Attention Zoo: attention implementations behind one interface, with a float64 oracle.

import attention_zoo as z
problem = z.Problem(batch=1, q_heads=8, q_len=1024, head_dim=64, causal=True)
impl = z.get("blockwise").build(problem)
out = impl(*problem.make_inputs())
"""

# our families and the peers; importing a module registers its entries
from attention_zoo import impls, peers  # noqa: F401
from attention_zoo.interface import Attention
from attention_zoo.problem import Problem, ProblemError
from attention_zoo.reference import dense_attention, error_metrics
from attention_zoo.registry import (
    Entry,
    HyperparameterError,
    UnknownImplError,
    UnsupportedError,
    get,
    list_impls,
    load_entry_points,
    register,
)
from attention_zoo.rules import AtLeast, AtMost, OneOf

load_entry_points()

__all__ = [
    "AtLeast",
    "AtMost",
    "Attention",
    "Entry",
    "HyperparameterError",
    "OneOf",
    "Problem",
    "ProblemError",
    "UnknownImplError",
    "UnsupportedError",
    "dense_attention",
    "error_metrics",
    "get",
    "list_impls",
    "register",
]
