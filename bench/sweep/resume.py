"""`python -m bench -m [hydra/launcher=...] resume=<run folder>,<run folder>,...`: resuming folders as multirun jobs.

Each folder is one job of the multirun, run by whichever launcher the command names (SLURM,
submitit_local, or Hydra's default: one after the other in this process), into the folder it resumes,
from the config saved there. Beside `resume=` only Hydra's own overrides (`hydra/...`, `hydra.*`:
the launcher and its options) may be given, since the saved configs decide what is measured.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from bench.errors import BenchConfigError

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
