"""Every `python -m bench` command README shows is a valid command: its overrides pass the pre-check.

The pre-check composes each job's config and expands it into cells, as `python -m bench` does before it
runs anything, so a renamed option, preset or launcher in README fails here rather than for a reader.
Commands with placeholders (`<run_id>`, `...`) and resumes (which need a run folder) are left out.
"""

import re
import shlex
from pathlib import Path

import pytest

from bench.__main__ import MULTIRUN_FLAGS, with_open_hparams
from bench.sweep.precheck import precheck

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    """README's `python -m bench ...` lines: bash blocks (continuation lines joined, comments dropped) and prose."""
    text = README.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            command = re.sub(r"^(\w+=\S+ )+", "", line)  # SLURM_CONF=... python -m bench
            lines.append(command)
    lines += re.findall(r"`(python -m bench [^`]+)`", text.replace("\n", " "))  # inline ones, in the prose
    wanted = [c for c in lines if c.startswith("python -m bench ") and not re.search(r"<|\.\.\.|resume=", c)]
    return list(dict.fromkeys(wanted))


COMMANDS = _commands()


def test_readme_shows_commands():
    assert len(COMMANDS) >= 10, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_the_command_passes_the_precheck(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run folder the pre-check claims goes here, not into the checkout
    argv = with_open_hparams(shlex.split(command)[3:])
    precheck([a for a in argv if a not in MULTIRUN_FLAGS], any(a in MULTIRUN_FLAGS for a in argv))
