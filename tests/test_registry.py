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
            from attention_zoo.impls.full import FullAttention

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


def test_approximate_entry_without_flops_is_an_error_naming_it() -> None:
    def linear_sketch(problem: z.Problem) -> z.Attention:
        """An approximate entry that forgot its FLOP count."""

    with pytest.raises(ValueError, match=r"^linear_sketch is approximate \(exact=False\), so it must declare flops="):
        z.register(family="kernel", exact=False, time="N", memory="N")(linear_sketch)
    assert "linear_sketch" not in z.list_impls()


def test_a_cuda_problem_without_cuda_gets_the_registry_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.core.cell import Cell, unsupported_reason

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    problem = z.Problem(q_len=8, head_dim=16, device="cuda")
    for name in ("full", "blockwise", "sliding_window", "performer", "sdpa_flash"):
        assert (
            z.get(name).unsupported_reason(problem)
            == f"{name} cannot run on cuda: CUDA is not available in this process"
        )
    cell = Cell(impl="linformer", problem=problem, mode="fwd", hparams={}, padding=0.0)
    assert unsupported_reason(cell) == "linformer cannot run on cuda: CUDA is not available in this process"


def test_a_missing_cuda_device_index_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    reason = z.get("full").unsupported_reason(z.Problem(q_len=8, device="cuda:1"))
    assert reason == "full cannot run on cuda:1: this process sees 1 CUDA device(s), so cuda:1 does not exist"


@pytest.mark.parametrize(
    ("name", "hparams", "problem"),
    [
        ("full", {}, z.Problem(q_len=100, causal=True)),
        ("blockwise", {"q_tile": 32, "k_tile": 32}, z.Problem(q_len=100, causal=True)),
        ("sliding_window", {"window": 16}, z.Problem(q_len=100)),
        ("window_global", {"window": 16, "global_tokens": 4}, z.Problem(q_len=100)),
        ("transformer_xl", {"segment_len": 32, "mem_len": 16}, z.Problem(q_len=100, causal=True)),
    ],
)
def test_flops_count_useful_work_and_flops_executed_the_waste(name: str, hparams: dict, problem: z.Problem) -> None:
    entry = z.get(name)
    useful, executed = entry.flops(problem, **hparams), entry.flops_executed(problem, **hparams)
    assert useful < executed
    assert entry.flops(problem, "backward", **hparams) == 2.5 * useful
    assert entry.flops_executed(problem, "backward", **hparams) == 2.5 * executed


def test_exact_flops_are_the_attended_pairs_and_full_executes_the_whole_rectangle() -> None:
    problem = z.Problem(batch=2, q_heads=2, q_len=10, kv_len=12, head_dim=8, causal=True, kv_valid_lens=(12, 5))
    # query i sees keys j <= i + 2 among the valid ones: sequence 0 has 3..12 keys, sequence 1 has min(., 5)
    pairs = sum(min(i + 3, valid) for valid in (12, 5) for i in range(10))
    assert z.get("blockwise").flops(problem) == 4 * 2 * 8 * pairs
    assert z.get("full").flops_executed(problem) == 4 * 2 * 8 * 2 * 10 * 12


def test_sliding_window_useful_flops_are_the_pairs_in_its_band() -> None:
    problem = z.Problem(batch=1, q_heads=1, q_len=20, head_dim=4)
    pairs = sum(min(i + 3, 19) - max(i - 3, 0) + 1 for i in range(20))  # |j - i| <= 3, inside 0..19
    assert z.get("sliding_window").flops(problem, window=3) == 4 * 4 * pairs


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
