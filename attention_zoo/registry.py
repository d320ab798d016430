"""The registry of attention implementations: register, get, list_impls, and entry-point loading.

Each entry states as data what it is and what it supports; whatever it cannot run is answered
by `unsupported_reason` as a string the harness records, never by an exception from torch.

Hyperparameters are the builder's keyword-only arguments; each one's type, rules and default are
declared once, in the signature, and the registry checks every value against them for every caller
(`Entry.build`, `Entry.resolve_hparams`, the bench's config pre-check, the regression suite):

    @register(family="sparse", exact=False, time="N*w", memory="N*w")
    def sliding_window(problem: Problem, *, window: Annotated[int, AtLeast(1)] = 256) -> Attention: ...

Rules (`attention_zoo.rules`): `AtLeast(bound)`, `AtMost(bound)`, `OneOf(*values)`; a bound is a number
or a Problem attribute (`AtLeast("kv_len")`, checked once the problem is known). The annotated type
(int, float, bool, str, optionally `| None`) is checked too; bool is never accepted as an int. A bad
value raises HyperparameterError with one line: `linformer proj_len=-1 is invalid: it must be an integer >= 1`.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

import torch

from attention_zoo.complexity import Complexity
from attention_zoo.errors import HyperparameterError, UnknownImplError, UnsupportedError
from attention_zoo.interface import Attention
from attention_zoo.natural_sort import natural_key
from attention_zoo.problem import DTYPES, Problem
from attention_zoo.rules import Declared, RuleError, declarations

FAMILIES = ("full", "flash", "sparse", "low_rank", "kernel", "memory")
MODES = ("forward", "backward")  # the passes unsupported_reason answers for
# FLOPs per pass in multiples of the forward (FlashAttention's count of a backward); flops() also takes both at once
PASS_FLOP_FACTORS = {"forward": 1.0, "backward": 2.5, "forward_backward": 3.5}
FEATURES = ("causal", "padding", "gqa", "cross", "packed")
# what an entry supports unless it says otherwise; packed documents (a block-diagonal mask) only by declaring it
DEFAULT_FEATURES = ("causal", "padding", "gqa", "cross")
ENTRY_POINT_GROUP = "attention_zoo.impls"


FlopsFn = Callable[[Problem, Mapping[str, Any]], float]
# availability(problem) or availability(problem, hparams): why the entry cannot run it (None: it can);
# the second form for limits that depend on a hyperparameter (a length that must be a multiple of a block)
AvailabilityFn = Callable[..., "str | None"]


def _dense_flops(problem: Problem, hparams: Mapping[str, Any]) -> float:
    return problem.dense_flops()


def _always_available(problem: Problem) -> str | None:
    return None


def device_unavailable(device: str) -> str | None:
    """Why this process cannot use the device, or None: the one device rule, applied to every entry."""
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return None
    if not torch.cuda.is_available():
        return "CUDA is not available in this process"
    count = torch.cuda.device_count()
    if index.isdigit() and int(index) >= count:
        return f"this process sees {count} CUDA device(s), so {device} does not exist"
    return None


@dataclass(frozen=True)
class Entry:
    """One registered implementation and the data describing it."""

    name: str
    builder: Callable[..., Attention]
    family: str
    exact: bool
    time: Complexity
    memory: Complexity
    devices: frozenset[str]
    dtypes: frozenset[str]
    modes: frozenset[str]
    features: frozenset[str]
    flops_fn: FlopsFn = _dense_flops
    executed_flops_fn: FlopsFn | None = None  # None: the entry executes only the work flops_fn counts
    availability: AvailabilityFn = _always_available
    backward_availability: AvailabilityFn = _always_available  # what else the backward pass needs
    oracle_hparams: Mapping[str, Any] = field(default_factory=dict)
    suite_hparams: Mapping[str, Any] = field(default_factory=dict)
    # True: the built Attention has decode_state/decode_step (attention_zoo/decode.py); a string: why it cannot
    decode: bool | str = False
    decode_availability: AvailabilityFn | None = None  # what else a decode step needs; None: `availability`
    doc: str = ""
    declared: Mapping[str, Declared] = field(default_factory=dict)  # each hyperparameter's type and rules

    @property
    def hparams(self) -> dict[str, Any]:
        """The entry's hyperparameters and their defaults (the builder's keyword-only arguments)."""
        params = inspect.signature(self.builder).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def resolve_hparams(
        self, overrides: Mapping[str, Any] | None = None, problem: Problem | None = None
    ) -> dict[str, Any]:
        """Defaults updated by overrides, each checked against its declaration (rules on the problem once it is given).

        An unknown name, or a value its declaration does not allow, is a one-line HyperparameterError.
        """
        resolved = self.hparams
        for key, value in (overrides or {}).items():
            if key not in resolved:
                allowed = ", ".join(resolved) or "none"
                raise HyperparameterError(f"{self.name} has no hyperparameter {key!r}: allowed are {allowed}")
            resolved[key] = value
        try:
            for key, value in resolved.items():
                self.declared[key].check(f"{self.name} {key}", value, problem)
        except RuleError as error:
            raise HyperparameterError(str(error)) from None
        return resolved

    def unsupported_reason(
        self, problem: Problem, mode: str = "forward", hparams: Mapping[str, Any] | None = None
    ) -> str | None:
        """Why this entry cannot run the problem in this mode with these hyperparameters (defaults
        updated by `hparams`), or None when it can."""
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is unknown: allowed are {', '.join(MODES)}")
        placement = self._placement_reason(problem)
        if placement:
            return placement
        if mode not in self.modes:
            return f"{self.name} has no {mode} pass"
        missing = sorted(problem.features - self.features)
        if missing:
            # the availability function may say why (e.g. a formulation that is not causal)
            detail = self._available(problem, hparams)
            return f"{self.name} does not support {', '.join(missing)} problems" + (f": {detail}" if detail else "")
        reason = self._available(problem, hparams)
        return reason or (self.backward_availability(problem) if mode == "backward" else None)

    def decode_reason(self, problem: Problem, hparams: Mapping[str, Any] | None = None) -> str | None:
        """Why this entry cannot take a decode step on the problem (q_len = T new tokens, kv_len = L + T), or None."""
        if self.decode is not True:
            return (
                f"{self.name} cannot decode: {self.decode}" if self.decode else f"{self.name} declares no decode step"
            )
        placement = self._placement_reason(problem)
        if placement:
            return placement
        if not problem.causal:
            return "a decode step is causal generation: the decode problem must be causal"
        if problem.kv_valid_lens is not None:
            return "decode steps run on whole caches: a padded (ragged) cache is not measured"
        missing = sorted(problem.features - self.features - {"cross"})  # decode is cross by construction
        if missing:
            return f"{self.name} does not support {', '.join(missing)} problems"
        if self.decode_availability is not None:
            return self.decode_availability(problem)
        return self._available(problem, hparams)

    def _placement_reason(self, problem: Problem) -> str | None:
        """Why the entry cannot run on the problem's device or dtype, or None."""
        if problem.device_type not in self.devices:
            return f"{self.name} runs on {', '.join(sorted(self.devices))}, not {problem.device_type}"
        unavailable = device_unavailable(problem.device)
        if unavailable:
            return f"{self.name} cannot run on {problem.device}: {unavailable}"
        if problem.dtype not in self.dtypes:
            return f"{self.name} supports dtypes {', '.join(sorted(self.dtypes))}, not {problem.dtype}"
        return None

    def _available(self, problem: Problem, hparams: Mapping[str, Any] | None) -> str | None:
        if len(inspect.signature(self.availability).parameters) == 2:
            return self.availability(problem, self.resolve_hparams(hparams))
        return self.availability(problem)

    def build(self, problem: Problem, **overrides: Any) -> Attention:
        """Build the implementation for one problem, outside any timed region."""
        reason = self.unsupported_reason(problem, hparams=overrides)
        if reason:
            raise UnsupportedError(reason)
        return self.builder(problem, **self.resolve_hparams(overrides, problem))

    def build_decoder(self, problem: Problem, **overrides: Any) -> Attention:
        """Build the implementation whose decode_state/decode_step run the decode problem (T queries, L + T keys)."""
        reason = self.decode_reason(problem, overrides)
        if reason:
            raise UnsupportedError(reason)
        return self.builder(problem, **self.resolve_hparams(overrides, problem))

    def flops(self, problem: Problem, mode: str = "forward", **overrides: Any) -> float:
        """Useful FLOPs of one pass ("forward", "backward", or "forward_backward": both), see PASS_FLOP_FACTORS."""
        return self._per_mode(self.flops_fn, problem, mode, overrides)

    def flops_executed(self, problem: Problem, mode: str = "forward", **overrides: Any) -> float:
        """FLOPs the entry executes in one pass, masked or padded work included (>= flops)."""
        return self._per_mode(self.executed_flops_fn or self.flops_fn, problem, mode, overrides)

    def _per_mode(self, forward_fn: FlopsFn, problem: Problem, mode: str, overrides: Mapping[str, Any]) -> float:
        forward = forward_fn(problem, self.resolve_hparams(overrides))
        return forward * PASS_FLOP_FACTORS[mode]


_REGISTRY: dict[str, Entry] = {}
_loaded = False  # see load_entries
ALL_DTYPES = tuple(d for d in DTYPES if d != "float64")


def register(
    *,
    family: str,
    exact: bool,
    time: str,
    memory: str,
    devices: Iterable[str] = ("cpu", "cuda"),
    dtypes: Iterable[str] = (*ALL_DTYPES, "float64"),
    modes: Iterable[str] = MODES,
    features: Iterable[str] = DEFAULT_FEATURES,
    flops: FlopsFn | None = None,
    flops_executed: FlopsFn | None = None,
    availability: AvailabilityFn = _always_available,
    backward_availability: AvailabilityFn = _always_available,
    oracle_hparams: Mapping[str, Any] | None = None,
    suite_hparams: Mapping[str, Any] | None = None,
    decode: bool | str = False,
    decode_availability: AvailabilityFn | None = None,
    name: str | None = None,
) -> Callable[[Callable[..., Attention]], Callable[..., Attention]]:
    """Register a builder `fn(problem, *, hparam=default, ...) -> Attention` under its name.

    flops(problem, hparams) is the forward pass's useful FLOPs; exact entries default to the dense count
    of the attended pairs, approximate ones must declare their own. flops_executed, where the entry also
    executes masked or padded work (whole tiles, buckets, slabs), counts everything it executes.
    availability(problem) says why the entry cannot run a problem at all (None: it can);
    backward_availability(problem), asked for the backward pass only, why it has no backward there.
    oracle_hparams are the oracle's sizes (small enough for several tiles or blocks at its short lengths);
    suite_hparams the regression suite's (bench/check/suite.py: N = 256..2048), where the suite's
    sizes by hyperparameter name do not fit the entry.
    decode=True: the built Attention takes decode steps (attention_zoo/decode.py); a string says why it cannot.
    decode_availability(problem), asked for decode problems, replaces `availability` there.
    features: the problem features it handles (FEATURES); "packed" (documents packed into a row) is not
    assumed: an entry that masks across documents declares it.
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is unknown: allowed are {', '.join(FAMILIES)}")
    for kind, values, allowed in (("feature", features, FEATURES), ("mode", modes, MODES)):
        unknown = set(values) - set(allowed)
        if unknown:
            raise ValueError(f"unknown {kind} {sorted(unknown)}: allowed are {', '.join(allowed)}")

    def wrap(builder: Callable[..., Attention]) -> Callable[..., Attention]:
        entry_name = name or builder.__name__
        if entry_name in _REGISTRY:
            raise ValueError(f"an implementation named {entry_name!r} is already registered")
        if flops is None and not exact:
            raise ValueError(
                f"{entry_name} is approximate (exact=False), so it must declare flops=: "
                "the dense count of exact attention is not its work"
            )
        entry = Entry(
            name=entry_name,
            builder=builder,
            family=family,
            exact=exact,
            time=Complexity(time),
            memory=Complexity(memory),
            devices=frozenset(devices),
            dtypes=frozenset(dtypes),
            modes=frozenset(modes),
            features=frozenset(features),
            flops_fn=flops or _dense_flops,
            executed_flops_fn=flops_executed,
            availability=availability,
            backward_availability=backward_availability,
            oracle_hparams=MappingProxyType(dict(oracle_hparams or {})),
            suite_hparams=MappingProxyType(dict(suite_hparams or {})),
            decode=decode,
            decode_availability=decode_availability,
            doc=(inspect.getdoc(builder) or "").split("\n")[0],
            declared=MappingProxyType(_declared_hparams(entry_name, builder)),
        )
        # fail at registration, not at run time, on a bad oracle_hparams/suite_hparams key or a default its rules refuse
        for kind, given in (("oracle_hparams", entry.oracle_hparams), ("suite_hparams", entry.suite_hparams)):
            unknown = set(given) - set(entry.hparams)
            if unknown:
                raise ValueError(f"{entry_name}: {kind} {sorted(unknown)} are not hyperparameters")
        entry.resolve_hparams(entry.oracle_hparams)
        entry.resolve_hparams(entry.suite_hparams)
        _REGISTRY[entry_name] = entry
        return builder

    return wrap


def _declared_hparams(name: str, builder: Callable[..., Attention]) -> dict[str, Declared]:
    """The declared type and rules of each keyword-only argument (hyperparameter) of a builder."""
    params = inspect.signature(builder).parameters.values()
    try:
        return declarations(builder, [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY])
    except NameError as error:  # an annotation naming something the builder's module does not define
        raise ValueError(f"{name}: the builder's annotations cannot be evaluated ({error})") from None


def load_entries() -> None:
    """Register every entry once, at the first lookup: our families, the peers, then the entry-point plugins.

    `import attention_zoo` (or its torch-free parts: rules, errors, modes, complexity) loads no family.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("attention_zoo.impls")
    importlib.import_module("attention_zoo.peers")
    load_entry_points()


def list_impls(pattern: str | Iterable[str] = "*") -> list[str]:
    """Registered names matching one or more fnmatch globs, naturally sorted."""
    load_entries()
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = {n for n in _REGISTRY for p in patterns if fnmatch.fnmatchcase(n, p)}
    return sorted(names, key=natural_key)


def get(name: str) -> Entry:
    """The entry registered under `name`; an unknown name lists close matches and every name."""
    load_entries()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownImplError(
            f"unknown implementation {name!r}{hint}; registered are: {', '.join(list_impls())}"
        ) from None


def load_entry_points() -> None:
    """Import third-party packages that add entries through the `attention_zoo.impls` group."""
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as error:  # a broken plugin must not take the registry down
            warnings.warn(f"attention_zoo plugin {point.name!r} failed to load: {error}", stacklevel=2)
