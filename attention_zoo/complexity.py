"""Declared complexities in the sequence length N ("N^2", "N*w", "N*log(N)"), and the slope a fit reads from them.

Torch-free: the report and the regression check compare fitted exponents with these without the zoo.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

LOG_N = re.compile(r"log\(N\)(?:\^([0-9.]+))?")


@dataclass(frozen=True)
class Complexity:
    """A declared complexity in the sequence length N, e.g. "N^2", "N*w" or "N*log(N)"."""

    expr: str

    @property
    def exponent(self) -> float:
        """The power of N the expression grows with, log factors aside (other symbols are constants)."""
        powers = re.findall(r"N(?:\^([0-9.]+))?", LOG_N.sub("", self.expr))
        return float(sum(float(p) if p else 1.0 for p in powers))

    @property
    def log_power(self) -> float:
        """The power of log(N) beside N^exponent: 1 for "N*log(N)", 0 for a plain power law."""
        return float(sum(float(p) if p else 1.0 for p in LOG_N.findall(self.expr)))

    def slope(self, n_min: float, n_max: float) -> float:
        """The log-log slope N^exponent * log(N)^log_power has between n_min and n_max: what a fit over them reads."""
        if not self.log_power or n_max <= n_min:
            return self.exponent
        return self.exponent + self.log_power * log_slope(n_min, n_max)

    def __str__(self) -> str:
        return f"O({self.expr})"


def log_slope(n_min: float, n_max: float) -> float:
    """The log-log slope of log(N) between n_min and n_max (0.12 over 1k..16k): a log factor's share of a fit."""
    return (math.log(math.log(n_max)) - math.log(math.log(n_min))) / (math.log(n_max) - math.log(n_min))
