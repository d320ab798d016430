"""The harness's user errors: ones a user can fix, each with a one-line message naming the value and what is allowed.

Import-free, so the code the regression suite runs (bench/core) has them on the base side of an A/B
too, whatever that commit's attention_zoo holds. How a command line ends on one: bench/command_line.py.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; its message is one line naming the bad value and what is allowed."""


class BenchConfigError(UserError, ValueError):
    """A config value that cannot describe a sweep; the message is one line."""
