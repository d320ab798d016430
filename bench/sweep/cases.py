"""Expand a config into cells (impl x problem x hyperparameters x mode), checking every value before anything runs."""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

import attention_zoo
from attention_zoo import Problem
from attention_zoo.inputs import INPUTS
from bench.core.cell import Cell
from bench.core.modes import MODES
from bench.errors import BenchConfigError
from bench.sweep.config import validate_options
from bench.sweep.lengths import LENGTHS, draw_documents, draw_lengths
from bench.tasks.mqar import check_task

GLOB_CHARS = set("*?[")


def _axis(sweep: Mapping[str, Any], name: str, kinds: tuple[type, ...], allowed: tuple | None = None) -> list:
    """One sweep axis as a non-empty list, each value of an allowed type (a scalar means a list of one)."""
    values = sweep[name] if isinstance(sweep[name], list) else [sweep[name]]
    if not values:
        raise BenchConfigError(f"sweep.{name}=[] is empty: give at least one value")
    type_names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
    for value in values:
        # bool is an int in Python, but `heads: true` is a mistake, not 1 head
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise BenchConfigError(
                f"sweep.{name} value {value!r} is invalid: expected {type_names} (or a list of them)"
            )
        if allowed is not None and value not in allowed:
            raise BenchConfigError(f"sweep.{name} value {value!r} is unknown: allowed are {', '.join(allowed)}")
    return values


def _grid_axes(sweep: Mapping[str, Any]) -> list[list]:
    return [
        _axis(sweep, "seq_lens", (int,)),
        _axis(sweep, "batch", (int,)),
        _axis(sweep, "heads", (int,)),
        _axis(sweep, "kv_heads", (int, type(None))),
        _axis(sweep, "head_dims", (int,)),
        _axis(sweep, "causal", (bool,)),
        _axis(sweep, "padding", (float, int)),
        _axis(sweep, "documents", (int,)),
        _axis(sweep, "dtypes", (str,)),
        _axis(sweep, "devices", (str,)),
    ]


def _problems(sweep: Mapping[str, Any], seed: int) -> list[tuple[Problem, float, str]]:
    """Every problem of the grid, shortest sequences first, with the padding fraction or length distribution
    that made it."""
    lengths = sweep["lengths"]
    if lengths is not None and lengths not in LENGTHS:
        raise BenchConfigError(f"sweep.lengths={lengths!r} is unknown: allowed are {', '.join(LENGTHS)} or null")
    problems = []
    for seq_len, batch, heads, kv_heads, head_dim, causal, padding, documents, dtype, device in itertools.product(
        *_grid_axes(sweep)
    ):
        if not 0 <= padding < 1:
            raise BenchConfigError(f"sweep.padding value {padding!r} is invalid: it must be in [0, 1)")
        if lengths and padding:
            raise BenchConfigError(
                f"sweep.padding={padding} and sweep.lengths={lengths} both set: padding gives every sequence "
                "the same valid length, lengths draws each one; give one of them"
            )
        # every sequence of the batch keeps the same number of keys: padding is the fraction cut off
        valid = max(1, round(seq_len * (1 - padding)))
        valid_lens = (valid,) * batch if padding else None
        if lengths:
            valid_lens = draw_lengths(lengths, seq_len, batch, seed)
        if not 1 <= documents <= seq_len:
            raise BenchConfigError(
                f"sweep.documents value {documents!r} is invalid: it must be in 1..N (N={seq_len} here)"
            )
        if documents > 1 and valid_lens:
            raise BenchConfigError(
                f"sweep.documents={documents} with sweep.padding or sweep.lengths: packed documents fill their rows, "
                "padding gives them an unused tail; give one of them"
            )
        problem = Problem(
            batch=batch,
            q_heads=heads,
            kv_heads=kv_heads,
            q_len=seq_len,
            head_dim=head_dim,
            causal=causal,
            kv_valid_lens=valid_lens,
            doc_lens=draw_documents(documents, seq_len, seed) if documents > 1 else None,
            dtype=dtype,
            device=device,
        )
        problems.append((problem, float(padding), lengths or ""))
    return problems


def _require_whole_causal_rows(
    problems: list[tuple[Problem, float, str]], mode: str, why_causal: str, why_whole: str
) -> None:
    """A mode that generates causally over whole rows (decode, recall): one line if a problem is not causal,
    or is padded, ragged or packed."""
    if not all(problem.causal for problem, _, _ in problems):
        raise BenchConfigError(f"sweep.modes has {mode}, {why_causal}: set sweep.causal=true")
    if any(problem.kv_valid_lens or problem.doc_lens for problem, _, _ in problems):
        raise BenchConfigError(
            f"sweep.modes has {mode}, {why_whole}: sweep.padding, sweep.lengths and sweep.documents apply to "
            "fwd/bwd only"
        )


def _decode_problems(sweep: Mapping[str, Any], problems: list[tuple[Problem, float, str]]) -> list[Problem]:
    """The decode problem of each grid problem and step length T: T queries against L + T keys, L = seq_len."""
    steps = _axis(sweep, "decode_tokens", (int,))
    for value in steps:
        if value < 1:
            raise BenchConfigError(f"sweep.decode_tokens value {value!r} is invalid: it must be an integer >= 1")
    _require_whole_causal_rows(problems, "decode", "which is causal generation", "whose caches are whole")
    context = [problem for problem, _, _ in problems]
    return [dataclasses.replace(p, q_len=t, kv_len=p.q_len + t) for p in context for t in steps]


def _recall_tasks(plain: Mapping[str, Any], problems: list[tuple[Problem, float, str]]) -> list[dict[str, Any]]:
    """One recall task per sweep.kv_pairs value (the recall config beside it), checked against every problem."""
    pairs = _axis(plain["sweep"], "kv_pairs", (int,))
    _require_whole_causal_rows(
        problems, "recall", "which trains a causal language model", "whose MQAR sequences are whole"
    )
    vocab = plain["recall"]["vocab_size"]
    for problem, _, _ in problems:
        for count in pairs:
            reason = check_task(vocab, problem.q_len, count)
            if reason:
                raise BenchConfigError(f"sweep.kv_pairs={count} with sweep.seq_lens={problem.q_len}: {reason}")
    return [{"task": "mqar", "kv_pairs": count, **plain["recall"]} for count in pairs]


def select_impls(impls: Mapping[str, Any]) -> list[str]:
    """Registered names matching the patterns (and the exact filter); a pattern matching nothing is an error."""
    if not impls["patterns"]:
        raise BenchConfigError("impls.patterns=[] is empty: give at least one name or glob, e.g. ['*']")
    names: list[str] = []
    for pattern in impls["patterns"]:
        matched = attention_zoo.list_impls(pattern)
        if not matched and not GLOB_CHARS & set(pattern):
            attention_zoo.get(pattern)  # raises UnknownImplError naming close matches
        if not matched:
            registered = ", ".join(attention_zoo.list_impls())
            raise BenchConfigError(f"impls pattern {pattern!r} matches no implementation; registered are: {registered}")
        names += [name for name in matched if name not in names]
    if impls["exact"] is not None:
        names = [name for name in names if attention_zoo.get(name).exact == impls["exact"]]
        if not names:
            raise BenchConfigError(f"impls.exact={impls['exact']} leaves none of {impls['patterns']} to run")
    return names


def _import(module: str) -> None:
    """Import a module that registers entries; a missing one is a config error naming it."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module.split(".")[0] and error.name != module:
            raise  # the module exists and one of its own imports failed: its traceback says where
        raise BenchConfigError(f"imports=[{module}]: no module named {module!r} on the Python path") from None


def _hparam_grid(name: str, overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The entry's resolved hyperparameters, one dict per combination of the swept (list) values."""
    entry = attention_zoo.get(name)
    swept = {key: value if isinstance(value, list) else [value] for key, value in overrides.items()}
    for key, values in swept.items():
        if key in entry.hparams and not values:  # (an unknown name fails below, naming the allowed ones)
            raise BenchConfigError(f"impls.hparams.{name}.{key}=[] is empty: give at least one value")
    return [
        entry.resolve_hparams(dict(zip(swept, combo, strict=False))) for combo in itertools.product(*swept.values())
    ]


def expand(cfg: DictConfig | Mapping[str, Any]) -> list[Cell]:
    """All cells of a config, in run order: shortest sequences first, then inputs, impl, hyperparameters, mode."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    validate_options(plain)
    impls, sweep = plain["impls"], plain["sweep"]
    for module in plain.get("imports", []):
        _import(module)  # extra entries (plugins, tests) register on import
    names = select_impls(impls)
    for name in impls["hparams"]:
        attention_zoo.get(name)  # a typo in a hyperparameter block's name is an error, not silence
    grids = {name: _hparam_grid(name, impls["hparams"].get(name) or {}) for name in names}
    modes = _axis(sweep, "modes", (str,), tuple(MODES))
    # counted before anything is expanded: a grid of a million cells would take minutes just to list
    inputs = _axis(sweep, "inputs", (str,), INPUTS)
    passes = [mode for mode in modes if mode not in ("decode", "recall")]
    per_problem = len(inputs) * (len(passes) + ("decode" in modes) * len(_axis(sweep, "decode_tokens", (int,))))
    per_problem += ("recall" in modes) * len(_axis(sweep, "kv_pairs", (int,)))  # (recall is drawn from MQAR only)
    count = math.prod(map(len, _grid_axes(sweep))) * sum(map(len, grids.values())) * per_problem
    if count > sweep["max_cells"]:
        raise BenchConfigError(
            f"the grid has {count:,} cells, more than sweep.max_cells={sweep['max_cells']:,}: "
            "sweep fewer values, or raise sweep.max_cells"
        )
    cells = []
    problems = _problems(sweep, plain["seed"])
    # inputs outside the entries: the worker draws each problem's inputs once per distribution
    for (problem, padding, lengths), drawn in itertools.product(problems if passes else [], inputs):
        for name in names:
            for hparams in grids[name]:
                attention_zoo.get(name).resolve_hparams(hparams, problem)  # rules on the problem (>= kv_len)
                cells += [Cell(name, problem, mode, hparams, padding, lengths, drawn) for mode in passes]
    for problem, drawn in itertools.product(_decode_problems(sweep, problems) if "decode" in modes else [], inputs):
        for name in names:
            for hparams in grids[name]:
                attention_zoo.get(name).resolve_hparams(hparams, problem)
                cells.append(Cell(name, problem, "decode", hparams, 0.0, inputs=drawn))
    tasks = _recall_tasks(plain, problems) if "recall" in modes else []
    for (problem, _, _), task in itertools.product(problems, tasks):
        for name in names:
            for hparams in grids[name]:
                attention_zoo.get(name).resolve_hparams(hparams, problem)
                cells.append(Cell(name, problem, "recall", hparams, 0.0, task=task))
    return cells
