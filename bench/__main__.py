"""`python -m bench [overrides]`: check the whole config in one line, then run the sweep through Hydra.

Hydra reports a bad override over several lines with a traceback hint; every bad value is therefore
checked first, here, by composing each job's config and expanding it into cells. Any error ends the
program with one line on stderr and exit code 2 before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bench.core.locks import claim_folder
from bench.errors import USER_ERRORS, BenchConfigError, exit_on_user_error, one_line
from bench.rows import read_rows_csv
from bench.sweep.cases import expand
from bench.sweep.config import CONF_DIR, BenchConfig, compose_config, register_configs
from bench.sweep.resume import resume_sweep
from bench.sweep.run import CONFIG_YAML, ENVIRONMENT_JSON, RunInterrupted, config_fingerprint, run

PROG = "bench"
MULTIRUN_FLAGS = ("-m", "--multirun")
HPARAMS_KEY = "impls.hparams"
OUTPUT_DIR_KEYS = {False: "hydra.run.dir", True: "hydra.sweep.dir"}  # by multirun
DEFAULT_RESULTS = Path("results")
INTERRUPT_EXIT = 130  # 128 + SIGINT, as a shell reports it

register_configs()


def _parse(overrides: list[str]) -> list[Override]:
    """Hydra's parse of each override; one that cannot be parsed is named, with how to quote a list."""
    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except OverrideParseException as error:
            reason = str(error).strip().splitlines()[0]
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


def check(overrides: list[str], multirun: bool) -> None:
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


def _load_saved(path: Path, load: typing.Callable[[str], Any], what: str) -> Any:
    """A file a run saved, read; missing, empty or unreadable is a one-line error naming it."""
    if not path.is_file():
        raise BenchConfigError(f"resume={path.parent} is not a run folder: it holds no {path.name}")
    text = path.read_text()
    try:
        saved = load(text) if text.strip() else None
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        reason = str(error).strip().splitlines()[0]
        raise BenchConfigError(f"{path} is damaged ({reason}): it is not {what}; the run cannot be resumed") from None
    if not isinstance(saved, dict):
        raise BenchConfigError(f"{path} is {'empty' if not text.strip() else 'damaged'}: it is not {what}; "
                               "the run cannot be resumed")  # fmt: skip
    return saved


def saved_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run folder's saved config (checked: it is the run's own and expands into cells) and saved environment.

    Refused, with nothing changed, when the folder's config is missing, empty, damaged or not the one
    the run wrote (environment.json's fingerprint, or rows of cells the config does not have).
    """
    saved_config = _load_saved(run_dir / CONFIG_YAML, yaml.safe_load, "a bench config")
    saved = _load_saved(run_dir / ENVIRONMENT_JSON, json.loads, "a run's environment record")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(BenchConfig), saved_config)
    except USER_ERRORS as error:
        raise BenchConfigError(f"{run_dir / CONFIG_YAML} is not a bench config: {one_line(error)}") from None
    cfg.resume = str(run_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    recorded = saved.get("config_sha256")
    if recorded is not None and recorded != config_fingerprint(plain):
        raise BenchConfigError(
            f"{run_dir / CONFIG_YAML} is not this run's config: {ENVIRONMENT_JSON} records another; "
            "the run cannot be resumed"
        )
    cell_ids = {cell.cell_id for cell in expand(plain)}
    rows_csv = run_dir / "rows.csv"
    if rows_csv.exists():
        foreign = set(read_rows_csv(rows_csv)["cell_id"]) - cell_ids
        if foreign:
            raise BenchConfigError(
                f"{run_dir / CONFIG_YAML} is not this run's config: {len(foreign)} cell(s) in rows.csv are not in it; "
                "the run cannot be resumed"
            )
    return plain, saved


def resume(overrides: list[str]) -> None:
    """Re-run a run folder's saved config into the same folder, skipping the cells it already holds."""
    run_dir = Path(next(o for o in overrides if o.startswith("resume=")).split("=", 1)[1])
    others = [o for o in overrides if not o.startswith("resume=")]
    if others:
        raise BenchConfigError(f"resume re-runs the saved config unchanged: drop the other overrides {others}")
    cfg, saved = saved_run(run_dir)
    run(cfg, run_dir, saved["run_id"], saved["job_id"])


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    """One Hydra job: results/<run_id>/, or results/<sweep_id>/<job_num>/ in a multirun."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with exit_on_user_error(PROG):
        if cfg.resume:  # a job of `-m ... resume=<folder>,...`: the folder's saved config, into the folder
            resume([f"resume={cfg.resume}"])
        elif hydra_cfg.mode == RunMode.MULTIRUN:
            run(cfg, run_dir, run_id=run_dir.parent.name, job_id=str(hydra_cfg.job.num))
        else:
            run(cfg, run_dir, run_id=run_dir.name)


def main(argv: list[str]) -> None:
    """Check the overrides (or resume a run), then hand over to Hydra; a user error exits 2 with one line.

    Ctrl-C stops the run with one line saying how to finish it (exit 130). `resume=<folder>` runs in this
    process; with -m, `resume=<folder>,<folder>...` resumes each folder as one job through the launcher
    named (bench/resume_sweep.py).
    """
    # hyperparameters are an open dict (impl -> name -> value): `++` adds a key or replaces it, so that
    # `impls.hparams.performer.num_features=[64,128]` works whether or not the preset already sets it
    argv = [f"++{a}" if a.startswith(HPARAMS_KEY) else a for a in argv]
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    overrides = [a for a in argv if a not in MULTIRUN_FLAGS]
    try:
        with exit_on_user_error(PROG):
            if any(o.startswith("resume=") for o in overrides) and not multirun:
                resume(overrides)  # in this process
                return
            if any(o.startswith("resume=") for o in overrides):  # one job per folder, through the launcher
                overrides, folders = resume_sweep(overrides)
                argv = [MULTIRUN_FLAGS[0], *overrides]
                for folder in folders:
                    saved_run(folder)
            elif not any(o.startswith("-") for o in overrides):  # Hydra's own flags (--help, --cfg ...) pass through
                check(overrides, multirun)
        sys.argv[1:] = argv  # Hydra reads its overrides from sys.argv
        hydra_main()
    except RunInterrupted as interrupted:
        print(f"{PROG}: {interrupted}", file=sys.stderr)
        sys.exit(INTERRUPT_EXIT)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before any cell was measured", file=sys.stderr)
        sys.exit(INTERRUPT_EXIT)


if __name__ == "__main__":
    main(sys.argv[1:])
