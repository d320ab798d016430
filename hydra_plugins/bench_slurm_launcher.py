"""The SLURM launcher of `python -m bench -m hydra/launcher=slurm_cpu|slurm_gpu`: submitit's, reporting every job's end.

hydra-submitit-launcher's SLURM launcher returns at the first job that did not finish, raising its
traceback while the others may still run. This one waits for every job, then prints one line for
each job that did not finish (its SLURM job id and state, or its error, and the rows its folder
kept) and one with the command that finishes them (`resume=` with their folders, through the same
launcher), and ends the multirun with exit code 1.

Hydra only instantiates launchers defined in the `hydra_plugins` package, hence this module's place.
Without the `cluster` extra (hydra-submitit-launcher) it defines nothing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import open_dict

from bench.command_line import described

STATE_POLL_MIN_S, STATE_POLL_MAX_S = 5.0, 60.0  # how often sacct is asked: a tenth of the wait, within these
KILL_WAIT_MAX_S = 300.0  # how long stopped jobs may take to leave their node


if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher"):
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

    class BenchSlurmLauncher(SubmititSlurmLauncher):
        """One SLURM job per multirun job (a job array); waits for all of them and reports those that did not finish."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            jobs = self._submit(job_overrides, initial_job_idx)
            _wait_for_all(jobs)
            _wait_until_off_the_node(jobs)
            returns, unfinished = [], []
            for number, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True), start=initial_job_idx):
                outcome = _outcome(job)
                if isinstance(outcome, JobReturn) and outcome.status == JobStatus.COMPLETED:
                    returns.append(outcome)
                else:
                    unfinished.append(self._unfinished_line(job, number, list(overrides), outcome))
            if unfinished:  # exactly these lines (a Hydra error would add a line of its own), and exit code 1
                print(*(line for line, _ in unfinished), self._resume_line(unfinished), sep="\n", file=sys.stderr)
                sys.exit(1)
            return returns

        def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
            """hydra-submitit-launcher's submission (SlurmLauncher.launch up to its wait), returning the jobs."""
            import submitit
            from hydra.core.singleton import Singleton
            from hydra.core.utils import filter_overrides
            from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

            init_keys = {"submitit_folder", "max_num_timeout"}
            executor = submitit.AutoExecutor(
                cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]},
            )  # fmt: skip
            shared = set(BaseQueueConf.__dataclass_fields__)  # the rest are prefixed with the executor's name
            parameters = {k: v for k, v in self.params.items() if k not in init_keys}
            executor.update_parameters(
                **{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in parameters.items()}
            )
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            print(f"submitting {len(job_overrides)} SLURM job(s); sweep folder {sweep_dir}", flush=True)
            arguments = []
            for number, overrides in enumerate(job_overrides, start=initial_job_idx):
                print(f"  #{number}: {' '.join(filter_overrides(overrides))}", flush=True)
                arguments.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}",
                                  Singleton.get_state()))  # fmt: skip
            return executor.map_array(self, *zip(*arguments, strict=True))

        def _job_folder(self, number: int, overrides: list[str]) -> Path:
            """Where the job writes: its Hydra output folder, or the folder it resumes."""
            config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(config.hydra.job):
                config.hydra.job.num = number
            if config.get("resume"):
                return Path(config.resume)
            return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)

        def _unfinished_line(self, job: Any, number: int, overrides: list[str], outcome: Any) -> tuple[str, Path]:
            from bench.rows import ROWS_CSV, read_rows_csv

            folder = self._job_folder(number, overrides)
            rows = len(read_rows_csv(folder / ROWS_CSV)) if (folder / ROWS_CSV).exists() else 0
            if isinstance(outcome, JobReturn):  # SLURM ran it to the end; the bench itself raised
                how = f"failed: {described(outcome._return_value)}"
            else:
                how = f"ended {job.state}"
            return f"bench: job {number} (SLURM job {job.job_id}) {how}; {rows} row(s) kept in {folder}", folder

        def _resume_line(self, unfinished: list[tuple[str, Path]]) -> str:
            launcher = [
                o for o in self.config.hydra.overrides.hydra if not o.startswith(("hydra.sweep.", "hydra.mode="))
            ]
            folders = ",".join(str(folder) for _, folder in unfinished)
            return (
                f"bench: {len(unfinished)} job(s) did not finish (their rows are kept); finish them with: "
                f"python -m bench -m {' '.join(launcher)} resume={folders}"
            )


def _wait_for_all(jobs: list[Any]) -> None:
    """Until every job has a result file or a final state; sacct is asked at least every STATE_POLL_MAX_S."""
    start = last_poll = time.monotonic()
    while not all(job.done() for job in jobs):
        time.sleep(1)
        now = time.monotonic()
        if now - last_poll >= min(STATE_POLL_MAX_S, max(STATE_POLL_MIN_S, (now - start) / 10)):
            jobs[0].watcher.update()  # one sacct call for all of them (submitit's own back-off waits far longer)
            last_poll = now


def _wait_until_off_the_node(jobs: list[Any]) -> None:
    """Until squeue no longer lists the jobs (at most KILL_WAIT_MAX_S).

    sacct records a cancelled or timed-out job as such at once, while its processes still run for
    SLURM's KillWait (SIGTERM, then SIGKILL) and may finish a cell; its folder is free to resume
    only once they are gone.
    """
    deadline = time.monotonic() + KILL_WAIT_MAX_S
    command = ["squeue", "--noheader", "--format=%i", f"--jobs={','.join(job.job_id for job in jobs)}"]
    while time.monotonic() < deadline:
        listed = subprocess.run(command, capture_output=True, text=True, check=False)
        if listed.returncode != 0 or not listed.stdout.strip():  # squeue refuses ids it no longer knows
            return
        time.sleep(1)


def _outcome(job: Any) -> Any:
    """The job's JobReturn, the exception submitit raises for it (a failed job), or None: SLURM stopped it."""
    if not job.paths.result_pickle.exists() and not job.state.startswith("COMPLETED"):
        return None  # cancelled, timed out, preempted, node failure...: no result to wait for (submitit waits 15 s)
    try:
        return job.results()[0]
    except Exception as error:
        return error
