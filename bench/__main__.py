"""`python -m bench [overrides]`: the pre-check (bench/sweep/precheck.py), then the sweep through Hydra.

Any user error ends the program with one line on stderr and exit code 2 before anything runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bench.command_line import exit_on_user_error
from bench.sweep.config import CONF_DIR, register_configs
from bench.sweep.precheck import precheck
from bench.sweep.resume import resume, resume_sweep, saved_run
from bench.sweep.run import RunInterrupted, nothing_measured, run

PROG = "bench"
MULTIRUN_FLAGS = ("-m", "--multirun")
HPARAMS_KEY = "impls.hparams"
INTERRUPT_EXIT = 130  # 128 + SIGINT, as a shell reports it
NOTHING_MEASURED_EXIT = 1  # the config was valid (2 is for user errors): every cell failed or was unsupported

register_configs()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    """One Hydra job: results/<run_id>/, or results/<sweep_id>/<job_num>/ in a multirun."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with exit_on_user_error(PROG):
        if cfg.resume:  # a job of `-m ... resume=<folder>,...`: the folder's saved config, into the folder
            resume([f"resume={cfg.resume}"])
        elif hydra_cfg.mode == RunMode.MULTIRUN:
            rows = run(cfg, run_dir, run_id=run_dir.parent.name, job_id=str(hydra_cfg.job.num))
            if nothing := nothing_measured(rows, run_dir):  # said; the other jobs go on
                print(f"{PROG}: job {hydra_cfg.job.num}: {nothing}", file=sys.stderr)
        else:
            rows = run(cfg, run_dir, run_id=run_dir.name)
            if nothing := nothing_measured(rows, run_dir):  # exited here: past Hydra it would print a traceback hint
                print(f"{PROG}: {nothing}", file=sys.stderr)
                sys.exit(NOTHING_MEASURED_EXIT)


def with_open_hparams(argv: list[str]) -> list[str]:
    """The command line with `++` before each hyperparameter override.

    Hyperparameters are an open dict (impl -> name -> value): `++` adds a key or replaces it, so that
    `impls.hparams.performer.num_features=[64,128]` works whether or not the preset already sets it.
    """
    return [f"++{a}" if a.startswith(HPARAMS_KEY) else a for a in argv]


def main(argv: list[str]) -> None:
    """Check the overrides (or resume a run), then hand over to Hydra; a user error exits 2 with one line.

    Ctrl-C stops the run with one line saying how to finish it (exit 130). `resume=<folder>` runs in this
    process; with -m, `resume=<folder>,<folder>...` resumes each folder as one job through the launcher
    named (bench/resume_sweep.py).
    """
    argv = with_open_hparams(argv)
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
                precheck(overrides, multirun)
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
