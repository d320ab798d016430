"""`python -m bench resume=<run folder>`: finishing a run from its saved config; with -m, several folders as jobs.

A folder is resumed only when its saved config is the run's own (saved_run). With -m,
`resume=<folder>,<folder>,...` makes each folder one job of a multirun (resume_sweep), run by
whichever launcher the command names (SLURM, submitit_local, or Hydra's default: one after the other
in this process), into the folder it resumes, from the config saved there. Beside `resume=` only
Hydra's own overrides (`hydra/...`, `hydra.*`: the launcher and its options) may be given, since the
saved configs decide what is measured.
"""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from attention_zoo.errors import first_line
from bench.command_line import USER_ERRORS, one_line
from bench.errors import BenchConfigError
from bench.rows import read_rows_csv
from bench.sweep.cases import expand
from bench.sweep.config import BenchConfig
from bench.sweep.run import CONFIG_YAML, ENVIRONMENT_JSON, config_fingerprint, run

RESUME_KEY = "resume"
RESUMES_DIR = ".resume"  # beside the folders: the resuming multirun's own files (multirun.yaml, .submitit)


def resume_sweep(overrides: list[str]) -> tuple[list[str], list[Path]]:
    """The overrides Hydra gets for a multirun resuming folders, and the folders (absolute) it resumes.

    The multirun's own files go into `.resume/` in the folders' parent (the original sweep
    folder, whose multirun.yaml stays as it was), and each job's output folder is the folder it resumes.
    """
    folders, launcher, others = [], [], []
    for override, line in zip(OverridesParser.create().parse_overrides(overrides), overrides, strict=True):
        key = override.key_or_group
        if key == RESUME_KEY:
            values = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
            folders += [Path(str(value)).resolve() for value in values]
        elif key == "hydra" or key.startswith(("hydra.", "hydra/")):
            launcher.append(line)
        else:
            others.append(line)
    if others:
        raise BenchConfigError(
            f"resume re-runs each folder's saved config unchanged: drop the overrides {others} "
            "(only hydra/... and hydra.* overrides, such as the launcher's, may be given with resume=)"
        )
    added = [f"{RESUME_KEY}={','.join(map(str, folders))}"]
    if not any(line.startswith("hydra.sweep.") for line in launcher):
        sweep_dir = Path(os.path.commonpath([folder.parent for folder in folders])) / RESUMES_DIR
        added += [f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${" + RESUME_KEY + "}"]
    return launcher + added, folders


def _load_saved(path: Path, load: typing.Callable[[str], Any], what: str) -> Any:
    """A file a run saved, read; missing, empty or unreadable is a one-line error naming it."""
    if not path.is_file():
        raise BenchConfigError(f"resume={path.parent} is not a run folder: it holds no {path.name}")
    text = path.read_text()
    try:
        saved = load(text) if text.strip() else None
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        reason = first_line(error)
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
