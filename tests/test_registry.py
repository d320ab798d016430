"""The registry: lookup errors, globs, duplicates, hyperparameters, plugins, and no eager xformers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated

import pytest

import attention_zoo as z
from attention_zoo import registry
from attention_zoo.registry import Complexity
from attention_zoo.rules import AtLeast, AtMost


def test_unknown_name_lists_close_matches_and_all_names() -> None:
    with pytest.raises(z.UnknownImplError) as error:
        z.get("sdpa_flsh")
    message = str(error.value)
    assert "\n" not in message
    assert "did you mean sdpa_flash" in message
    assert all(name in message for name in z.list_impls())


def test_list_impls_takes_globs_and_sorts() -> None:
    assert z.list_impls("sdpa_*") == ["sdpa_cudnn", "sdpa_efficient", "sdpa_flash", "sdpa_math"]
    assert z.list_impls(["full", "blockwise"]) == ["blockwise", "full"]
    assert z.list_impls("nothing*") == []


def test_duplicate_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        z.register(family="full", exact=True, time="N^2", memory="N^2", name="full")(lambda problem: None)


def test_unknown_hyperparameter_names_the_allowed_ones() -> None:
    with pytest.raises(z.HyperparameterError) as error:
        z.get("blockwise").build(z.Problem(q_len=8), q_tlie=4)
    assert str(error.value) == "blockwise has no hyperparameter 'q_tlie': allowed are q_tile, k_tile"


def test_bad_hyperparameter_value_is_one_line() -> None:
    with pytest.raises(z.HyperparameterError, match=r"blockwise q_tile=0 is invalid: it must be an integer >= 1"):
        z.get("blockwise").build(z.Problem(q_len=8), q_tile=0)


def test_unsupported_is_a_reason_not_an_exception() -> None:
    entry = z.get("sdpa_efficient")
    reason = entry.unsupported_reason(z.Problem(q_len=8, device="cpu"))
    assert reason and "CUDA" in reason
    with pytest.raises(z.UnsupportedError, match="CUDA"):
        entry.build(z.Problem(q_len=8))


@pytest.mark.parametrize(("expr", "exponent"), [("N^2", 2.0), ("N", 1.0), ("N*w", 1.0), ("N*(L+M)", 1.0), ("1", 0.0)])
def test_declared_complexity_exponent(expr: str, exponent: float) -> None:
    assert Complexity(expr).exponent == exponent


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env or None, timeout=120
    )


def test_importing_attention_zoo_imports_neither_xformers_nor_triton() -> None:
    result = _run("import sys, attention_zoo; print(any(m in sys.modules for m in ('xformers', 'triton')))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_entry_point_plugin_adds_an_entry(tmp_path: Path) -> None:
    (tmp_path / "zoo_plugin.py").write_text(
        textwrap.dedent(
            """
            import attention_zoo as z
            from attention_zoo.full import FullAttention

            @z.register(family="full", exact=True, time="N^2", memory="N^2")
            def plugin_full(problem):
                \"\"\"A third-party copy of full attention.\"\"\"
                return FullAttention(problem)
            """
        )
    )
    dist = tmp_path / "zoo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[attention_zoo.impls]\nplugin_full = zoo_plugin\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    result = _run(
        """
        import attention_zoo as z
        problem = z.Problem(q_len=5, head_dim=8)
        impl = z.get("plugin_full").build(problem)
        q, k, v = problem.make_inputs()
        error = (impl(q, k, v) - impl.dense_reference(q, k, v)).abs().max().item()
        print("plugin_full" in z.list_impls(), error < 1e-5)
        """,
        **env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_every_hyperparameter_declares_its_type_and_its_default_obeys_its_rules() -> None:
    for name in z.list_impls():
        entry = z.get(name)
        for key, declared in entry.declared.items():
            assert declared.types, f"{name} {key} has no annotated type"
        entry.resolve_hparams(problem=z.Problem(q_len=8))


def test_rules_are_read_from_postponed_annotations_and_checked_at_registration() -> None:
    # this module has `from __future__ import annotations`: the annotations below are strings until read
    def builder(problem: z.Problem, *, width: Annotated[float, AtLeast(0.5), AtMost(2)] = 1.0) -> z.Attention:
        raise AssertionError("never built here")

    def broken(problem: z.Problem, *, width: Annotated[int, AtLeast(1)] = 0) -> z.Attention:
        raise AssertionError("never built")

    z.register(family="full", exact=True, time="N^2", memory="N^2", name="_rule_test")(builder)
    try:
        assert z.get("_rule_test").resolve_hparams({"width": 2}) == {"width": 2}
        with pytest.raises(z.HyperparameterError, match=r"^_rule_test width=3 is invalid: it must be a number <= 2$"):
            z.get("_rule_test").resolve_hparams({"width": 3})
        with pytest.raises(
            z.HyperparameterError, match=r"^_rule_broken width=0 is invalid: it must be an integer >= 1$"
        ):
            z.register(family="full", exact=True, time="N^2", memory="N^2", name="_rule_broken")(broken)
    finally:
        registry._REGISTRY.pop("_rule_test")
    assert "_rule_broken" not in z.list_impls()
