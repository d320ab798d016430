"""The config schema: dataclasses registered in Hydra's ConfigStore; the YAML in conf/ only picks and overrides.

Sweep axes accept one value or a list of values (a list is swept); cases.py checks their types and
values, so a bad one fails in one line before anything runs. Every other option declares its rules
in its annotation (`threads: Annotated[int | None, AtLeast(1)]`, the same rules as the entries'
hyperparameters, see attention_zoo/rules.py); `validate_options` checks them all, a bound naming another
option of the same section (`AtMost("max_samples")`) compares with it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from attention_zoo.rules import Above, AtLeast, AtMost, OneOf, declared
from bench.core.heaps import TIMING_HEAPS
from bench.core.locks import TIMING_LOCK


def _conf_dir() -> Path:
    """The config folder: the installed package's (conf/ is mapped into the wheel as bench.conf, pyproject.toml),
    else conf/ beside bench/ in a checkout run from source (scripts/gpu_check.sh, an older editable install)."""
    spec = importlib.util.find_spec("bench.conf")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "conf"


CONF_DIR = _conf_dir()


@dataclass
class ImplsConfig:
    """Which registered implementations to run, and their hyperparameters."""

    patterns: list[str] = field(default_factory=lambda: ["*"])  # fnmatch globs or names, see list_impls
    exact: bool | None = None  # true: exact entries only; false: approximate only; null: both
    # impl name -> {hyperparameter: value}; a list value is swept, one cell per value
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """The grid: every combination of these axes is one problem, run in every mode."""

    seq_lens: Any = field(default_factory=lambda: [256, 1024, 4096])  # q_len = kv_len
    batch: Any = 1
    heads: Any = 8  # query heads
    kv_heads: Any = None  # null: as many as query heads (MHA); fewer: GQA/MQA
    head_dims: Any = 64
    causal: Any = False
    padding: Any = 0.0  # fraction of each sequence's keys that are padding, in [0, 1)
    # ragged batches: each sequence's valid length drawn (seeded) from uniform, longtail or bimodal; null: none
    lengths: Any = None
    documents: Any = 1  # packed rows: documents per row of N tokens, block-diagonal mask (bench/sweep/lengths.py)
    # what q, k, v are drawn from for the error metric (and the timing): iid, local, retrieval, low_rank
    inputs: Any = "iid"
    decode_tokens: Any = 1  # decode mode: new tokens per step (T; a few for speculative decoding)
    kv_pairs: Any = 4  # recall mode: key-value pairs per MQAR sequence (seq_lens is then the sequence length)
    dtypes: Any = "float32"
    devices: Any = "cpu"
    modes: Any = "fwd"  # fwd, bwd, fwd_bwd, decode (seq_lens is then the context length L), recall
    max_cell_flops: Annotated[float | None, Above(0)] = None  # cells doing more work are skipped; null: no cap
    max_cells: Annotated[int, AtLeast(1)] = 10_000  # a larger grid stops before it is expanded


@dataclass
class TimingConfig:
    """How long and how often each cell is timed."""

    warmup_calls: Annotated[int, AtLeast(0)] = 1  # untimed calls after building (compile, caches, allocator)
    warmup_s: Annotated[float, AtLeast(0)] = 0.0  # and keep warming up until this much time has passed
    min_samples: Annotated[int, AtLeast(1), AtMost("max_samples")] = 3
    max_samples: Annotated[int, AtLeast(1)] = 50
    budget_s: Annotated[float, AtLeast(0)] = (
        0.5  # stop sampling once this much time has passed and min_samples are taken
    )
    cell_timeout_s: Annotated[float, Above(0)] = 300.0  # a cell running longer is killed and recorded as `timeout`
    # what timed CPU calls allocate from: resident, a heap kept faulted in (calls reuse its pages), or mapped,
    # every block of 64 KiB or more mapped and faulted in afresh at each call (bench/core/memory.py)
    heap: Annotated[str, OneOf(*TIMING_HEAPS)] = TIMING_HEAPS[0]


@dataclass
class RecallConfig:
    """recall mode: the MQAR task (bench/tasks/mqar.py) and the training budget of its tiny model (bench/tasks)."""

    steps: Annotated[int, AtLeast(1)] = 600  # AdamW steps, each on a fresh batch of sweep.batch sequences
    learning_rate: Annotated[float, Above(0)] = 3e-3  # the one-cycle schedule's peak
    weight_decay: Annotated[float, AtLeast(0)] = 0.1
    vocab_size: Annotated[int, AtLeast(4)] = 128  # keys from 1..vocab/2-1, values from vocab/2..vocab-1
    power_a: Annotated[float, Above(0), AtMost(1)] = 0.01  # Zoology's power law of query gaps (1: uniform)
    test_examples: Annotated[int, AtLeast(1)] = 1024  # held-out sequences the accuracy is measured on
    layers: Annotated[int, AtLeast(1)] = 2  # blocks of the model, each with the attention under test


@dataclass
class BenchConfig:
    """Everything one `python -m bench` run needs."""

    impls: ImplsConfig = field(default_factory=ImplsConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    recall: RecallConfig = field(default_factory=RecallConfig)
    threads: Annotated[int | None, AtLeast(1)] = None  # torch threads in the worker; null: os.cpu_count()
    seed: int = 0  # inputs are drawn from this seed
    memory_limit_bytes: Annotated[int | None, AtLeast(1)] = None  # worker RSS limit; null: 90% of MemAvailable
    # a file every timing job on this machine locks while it measures, so that jobs started at once
    # (submitit_local, two commands) measure one after the other; null: measure without waiting
    timing_lock: str | None = TIMING_LOCK
    imports: list[str] = field(default_factory=list)  # extra modules that register entries (plugins, tests)
    resume: str | None = None  # a run folder: re-run its saved config, skipping cells already there
    progress: bool = True  # show a progress bar
    report: bool = True  # write report.html and report.md into the run folder at the end


def validate_options(plain: Mapping[str, Any], schema: type = BenchConfig, prefix: str = "") -> None:
    """A one-line RuleError for the first option (sections included) its annotation does not allow."""
    hints = typing.get_type_hints(schema, include_extras=True)
    for option in dataclasses.fields(schema):
        value, hint = plain[option.name], hints[option.name]
        if dataclasses.is_dataclass(hint):
            validate_options(value, hint, f"{prefix}{option.name}.")
        else:
            declared(hint).check(f"{prefix}{option.name}", value, plain)


def register_configs() -> None:
    """Make the schema known to Hydra; conf/config.yaml lists it first, so every key is type-checked."""
    ConfigStore.instance().store(name="bench_schema", node=BenchConfig)


def compose_config(overrides: list[str]) -> DictConfig:
    """The config one job of `python -m bench <overrides>` runs with, composed outside Hydra's app."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)
