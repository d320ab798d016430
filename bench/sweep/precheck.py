"""The pre-check of `python -m bench [overrides]`: every override and every job's config, before Hydra runs anything.

Hydra reports a bad override over several lines with a traceback hint; every bad value is therefore
checked first, here, by composing each job's config and expanding it into cells. The first user error
is raised as one line (BenchConfigError), and nothing has run.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
import typing
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException

from attention_zoo.errors import first_line
from bench.core.locks import claim_folder
from bench.errors import BenchConfigError
from bench.sweep.cases import expand
from bench.sweep.config import BenchConfig, compose_config

OUTPUT_DIR_KEYS = {False: "hydra.run.dir", True: "hydra.sweep.dir"}  # by multirun
DEFAULT_RESULTS = Path("results")


def _parse(overrides: list[str]) -> list[Override]:
    """Hydra's parse of each override; one that cannot be parsed is named, with how to quote a list."""
    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except OverrideParseException as error:
            reason = first_line(error)
            raise BenchConfigError(
                f"cannot parse the override {line!r} ({reason}): write key=value, a list as key='[a,b]'"
            ) from None
    return parsed


def _check_key(key: str) -> None:
    """An override's key must name an option of the schema; else the options there and the closest match."""
    schema: Any = BenchConfig
    path = []
    for part in key.split("."):
        if not dataclasses.is_dataclass(schema):
            return  # inside an open dict (impls.hparams.<impl>.<name>): checked against the entry's hyperparameters
        options = [f.name for f in dataclasses.fields(schema)]
        if part not in options:
            close = difflib.get_close_matches(part, options, n=1)
            hint = f" (did you mean {'.'.join([*path, close[0]])}?)" if close else ""
            where = ".".join(path) or "the config"
            raise BenchConfigError(f"unknown config key {key!r}{hint}; {where} has: {', '.join(options)}")
        schema = typing.get_type_hints(schema)[part]
        path.append(part)


def _check_output_dir(parsed: list[Override], multirun: bool) -> None:
    """The folder Hydra will create must be creatable and writable, and not a folder another run is writing."""
    key = OUTPUT_DIR_KEYS[multirun]
    given = [o.value() for o in parsed if o.get_key_element().lstrip("+") == key]
    folder = Path(str(given[-1])) if given else DEFAULT_RESULTS
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BenchConfigError(f"{key}={folder}: {existing} is a file, not a folder; give a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BenchConfigError(f"{key}={folder}: {existing} is not writable; give a folder you can write")
    if existing == folder and given:
        os.close(claim_folder(folder))  # fails at once, in one line, when another process writes there


def precheck(overrides: list[str], multirun: bool) -> None:
    """Parse and check every override, then compose and expand every job's config; raises the first user error."""
    parsed = _parse(overrides)
    for override, line in zip(parsed, overrides, strict=True):
        key = override.get_key_element()
        if override.is_sweep_override() and not multirun:
            raise BenchConfigError(
                f"{line} sweeps several values: add -m to run one job per value, or give a list ({key}='[...]')"
            )
        if override.package is None and "/" not in key and not key.startswith(("hydra", "+", "~")):
            _check_key(key)
    _check_output_dir(parsed, multirun)
    for job in job_overrides(overrides):
        expand(compose_config(job))


def job_overrides(overrides: list[str]) -> list[list[str]]:
    """The overrides of each job a multirun would launch (one job when nothing is swept)."""
    choices = [
        [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override() else [line]
        for o, line in zip(_parse(overrides), overrides, strict=True)
    ]
    return [list(job) for job in itertools.product(*choices)]
