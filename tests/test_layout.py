"""The layout's rules: imports point one way, the report and the config load no torch, no file passes 450 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SUBSYSTEMS = ("bench.sweep", "bench.report", "bench.check")
HARNESS = ("bench.sweep", "bench.check")  # what runs cells, and so imports torch
MAX_LINES = 450
ZOO_API = {"attention_zoo.Problem", "attention_zoo.get", "attention_zoo.list_impls"}  # README's, for the A/B base side


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return imported


def _files(*parts: str) -> list[Path]:
    found = []
    for part in parts:
        target = BENCH / part
        found += sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
    return found


@pytest.mark.parametrize("path", _files("core", "rows", "fit", "errors", "command_line"), ids=_module)
def test_the_core_imports_no_subsystem(path: Path) -> None:
    wrong = sorted(m for m in _imports(path) if m.startswith(SUBSYSTEMS))
    assert not wrong, f"{_module(path)} imports {wrong}: the core, rows, fit and errors sit below the subsystems"


@pytest.mark.parametrize("path", _files("report", "rows", "fit", "errors", "command_line"), ids=_module)
def test_the_report_imports_no_torch(path: Path) -> None:
    wrong = sorted(m for m in _imports(path) if m.split(".")[0] == "torch" or m.startswith(HARNESS))
    assert not wrong, f"{_module(path)} imports {wrong}: the report reads rows without torch or the harness"


# What the regression suite's processes import: on the base side of an A/B that is this tree's harness with an
# older commit's attention_zoo, so it may use only the zoo API README lists (names of the package itself).
SUITE_SIDE = [*_files("core", "errors"), BENCH / "check" / "suite.py", *sorted((REPO / "benchmarks").glob("*.py"))]


@pytest.mark.parametrize("path", SUITE_SIDE, ids=lambda path: str(path.relative_to(REPO)))
def test_the_suite_uses_only_the_zoo_api_an_older_commit_has(path: Path) -> None:
    suite_side = {_module(p) for p in SUITE_SIDE}
    wrong = sorted(
        m
        for m in _imports(path)
        if (m.startswith("attention_zoo.") and m not in ZOO_API)
        or (m.startswith("bench.") and m not in suite_side and m.rpartition(".")[0] not in suite_side)
    )
    assert not wrong, f"{path.relative_to(REPO)} imports {wrong}, which the base side of an A/B may not have"


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.parametrize("module", ["bench.sweep.config", "bench.report.cli", "bench.rows", "bench.fit"])
def test_importing_loads_neither_torch_nor_the_zoo(module: str) -> None:
    loaded = _loaded_after(f"import {module}")
    heavy = [
        m
        for m in loaded
        if m.split(".")[0] == "torch" or m.startswith(("attention_zoo.impls", "attention_zoo.registry"))
    ]
    assert not heavy, f"import {module} loads {heavy[:5]}"


def test_the_zoo_loads_its_families_at_the_first_lookup() -> None:
    assert "attention_zoo.impls.full" not in _loaded_after("import attention_zoo")
    assert "attention_zoo.impls.full" in _loaded_after("import attention_zoo; attention_zoo.list_impls()")


def test_no_python_file_is_over_the_limit() -> None:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    long = {
        name: n for name in tracked.stdout.split() if (n := len((REPO / name).read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"
