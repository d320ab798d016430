"""The zoo's errors, each with a one-line message; torch-free, so a command line can name them without loading torch."""

from __future__ import annotations

from attention_zoo.rules import RuleError


def first_line(error: BaseException | str) -> str:
    """The first non-blank line of an error's message, stripped ("" when it has none): what a one-line report shows."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


class ProblemError(ValueError):
    """A problem value that cannot describe an attention task; the message is one line."""


class UnknownImplError(KeyError):
    """An implementation name or pattern that matches nothing registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class HyperparameterError(RuleError):
    """A hyperparameter an entry does not have, or a value it cannot use; the message is one line."""


class UnsupportedError(RuntimeError):
    """Building an entry for a problem it states it cannot run."""
