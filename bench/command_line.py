"""One error path for the command lines (`python -m bench`, `bench.report`, `bench.check`).

Every error a user can cause (a bad value, a folder that cannot be written, a damaged results file)
ends the program with one line on stderr, naming the bad value and what is allowed, and exit code 2.
Anything else is a programming error and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import omegaconf
from hydra.errors import HydraException

from attention_zoo.errors import ProblemError, UnknownImplError, first_line
from attention_zoo.rules import RuleError
from bench.errors import UserError

USAGE_EXIT = 2

USER_ERRORS = (
    UserError,
    RuleError,
    ProblemError,
    UnknownImplError,
    HydraException,
    omegaconf.errors.OmegaConfBaseException,
)


def one_line(error: BaseException) -> str:
    """The error's first line, followed by its cause's first line (Hydra wraps OmegaConf's reason)."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    parts = []
    options = getattr(error, "options", None)  # Hydra's MissingConfigException lists a group's options
    while error is not None and len(parts) < 2:
        line = first_line(error)
        if line and line not in parts:
            parts.append(line)
        error = error.__cause__
    return " ".join(parts) + (f"; available: {', '.join(options)}" if options else "")


def described(error: BaseException) -> str:
    """`Type: first line of the message`, for a results column or a job's end (a programming error's summary)."""
    return f"{type(error).__name__}: {first_line(error)}"


def is_user_error(error: BaseException) -> bool:
    """A user error, or an OSError about a path (a folder that cannot be written, a file in the way)."""
    return isinstance(error, USER_ERRORS) or (isinstance(error, OSError) and error.filename is not None)


@contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Turn a user error raised inside into `prog: error: <one line>` on stderr and exit 2."""
    try:
        yield
    except Exception as error:
        if not is_user_error(error):
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        sys.exit(USAGE_EXIT)


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr and exit 2 (argparse prints its usage first)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(USAGE_EXIT)
