"""`python -m bench [overrides]`: check the whole config in one line, then run the sweep through Hydra.

Hydra reports a bad override over several lines with a traceback hint; every bad value is therefore
checked first, here, by composing each job's config and expanding it into cells. Any error ends the
program with one line on stderr and exit code 2 before anything runs.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import hydra
import omegaconf
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bench.cases import BenchConfigError, expand
from bench.config import BenchConfig, compose_config, register_configs
from bench.resume_sweep import resume_sweep
from bench.run import run

MULTIRUN_FLAGS = ("-m", "--multirun")
HPARAMS_KEY = "impls.hparams"
USER_ERRORS = (HydraException, omegaconf.errors.OmegaConfBaseException, ValueError, KeyError, FileNotFoundError)

register_configs()


def one_line(error: BaseException) -> str:
    """The error's first line, followed by its cause's first line (Hydra wraps OmegaConf's reason)."""
    parts = []
    options = getattr(error, "options", None)  # Hydra's MissingConfigException lists a group's options
    while error is not None and len(parts) < 2:
        text = str(error).strip().splitlines()
        if text and text[0] not in parts:
            parts.append(text[0].strip())
        error = error.__cause__
    return " ".join(parts) + (f"; available: {', '.join(options)}" if options else "")


def job_overrides(overrides: list[str]) -> list[list[str]]:
    """The overrides of each job a multirun would launch (one job when nothing is swept)."""
    choices = [
        [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override() else [line]
        for o, line in zip(OverridesParser.create().parse_overrides(overrides), overrides, strict=False)
    ]
    return [list(job) for job in itertools.product(*choices)]


def check(overrides: list[str]) -> None:
    """Compose and expand every job's config; raises the first user error found."""
    for job in job_overrides(overrides):
        expand(compose_config(job))


def saved_run(run_dir: Path) -> tuple[DictConfig, dict]:
    """A run folder's saved config (checked: it expands into cells) and its saved environment."""
    if not (run_dir / "config.yaml").exists():
        raise BenchConfigError(f"resume={run_dir} is not a run folder: it holds no config.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(BenchConfig), OmegaConf.load(run_dir / "config.yaml"))
    cfg.resume = str(run_dir)
    expand(cfg)
    return cfg, json.loads((run_dir / "environment.json").read_text())


def resume(overrides: list[str]) -> None:
    """Re-run a run folder's saved config into the same folder, skipping the cells it already holds."""
    run_dir = Path(next(o for o in overrides if o.startswith("resume=")).split("=", 1)[1])
    others = [o for o in overrides if not o.startswith("resume=")]
    if others:
        raise BenchConfigError(f"resume re-runs the saved config unchanged: drop the other overrides {others}")
    cfg, saved = saved_run(run_dir)
    run(cfg, run_dir, saved["run_id"], saved["job_id"])


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    """One Hydra job: results/<run_id>/, or results/<sweep_id>/<job_num>/ in a multirun."""
    if cfg.resume:  # a job of `-m ... resume=<folder>,...`: the folder's saved config, into the folder
        resume([f"resume={cfg.resume}"])
        return
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        run(cfg, run_dir, run_id=run_dir.parent.name, job_id=str(hydra_cfg.job.num))
    else:
        run(cfg, run_dir, run_id=run_dir.name)


def main(argv: list[str]) -> None:
    """Check the overrides (or resume a run), then hand over to Hydra; a user error exits 2 with one line.

    `resume=<folder>` runs in this process; with -m, `resume=<folder>,<folder>...` resumes each folder
    as one job through the launcher named (bench/resume_sweep.py).
    """
    # hyperparameters are an open dict (impl -> name -> value): `++` adds a key or replaces it, so that
    # `impls.hparams.performer.num_features=[64,128]` works whether or not the preset already sets it
    argv = [f"++{a}" if a.startswith(HPARAMS_KEY) else a for a in argv]
    overrides = [a for a in argv if a not in MULTIRUN_FLAGS]
    try:
        if any(o.startswith("resume=") for o in overrides) and len(overrides) == len(argv):
            resume(overrides)  # in this process
            return
        if any(o.startswith("resume=") for o in overrides):  # one job per folder, through the launcher
            overrides, folders = resume_sweep(overrides)
            argv = [MULTIRUN_FLAGS[0], *overrides]
            for folder in folders:
                saved_run(folder)
        elif not any(o.startswith("-") for o in overrides):  # Hydra's own flags (--help, --cfg ...) pass through
            check(overrides)
    except USER_ERRORS as error:
        print(f"bench: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = argv  # Hydra reads its overrides from sys.argv
    hydra_main()


if __name__ == "__main__":
    main(sys.argv[1:])
