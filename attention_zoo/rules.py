"""Rules for option values, declared once where the option is declared and checked for every caller.

A builder states each hyperparameter's type, rules and default in its signature::

    def sliding_window(problem, *, window: Annotated[int, AtLeast(1)] = 256) -> Attention: ...
    def linformer(problem, *, max_len: Annotated[int | None, AtLeast("kv_len")] = None) -> Attention: ...

The registry reads them with `typing.get_type_hints(builder, include_extras=True)`. The type
(int, float, bool, str, or a union of them with None) is always checked; bool is never an int,
an int is a float. Rules: `AtLeast(bound)`, `Above(bound)` (strictly), `AtMost(bound)`,
`OneOf(*values)`. A bound is a number,
or the name of a value in the rule's context: an attribute of the Problem for a hyperparameter
(`AtLeast("kv_len")`), a sibling option for a config option (`AtMost("max_samples")`); a rule whose
context is not known yet (no problem) is checked later, when it is. None is never checked by a rule.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


class RuleError(ValueError):
    """A value its declaration does not allow; the message is one line naming the value and what is allowed."""


@dataclass(frozen=True)
class _Bound:
    """value <op> bound; the bound is a number or names a value of the context."""

    bound: float | str
    symbol = ""

    def holds(self, value: Any, bound: Any) -> bool:
        raise NotImplementedError

    def violation(self, value: Any, context: Any) -> str | None:
        """What the value must be (`>= 1`, `>= kv_len (256)`), or None when it is, or cannot be told yet."""
        if isinstance(self.bound, str):
            if context is None:
                return None  # the context (the problem) is not known yet
            bound = context[self.bound] if isinstance(context, Mapping) else getattr(context, self.bound)
            named = f"{self.bound} ({bound})"
        else:
            bound, named = self.bound, str(self.bound)
        return None if bound is None or self.holds(value, bound) else f"{self.symbol} {named}"


class AtLeast(_Bound):
    """value >= bound."""

    symbol = ">="

    def holds(self, value: Any, bound: Any) -> bool:
        return value >= bound


class Above(_Bound):
    """value > bound."""

    symbol = ">"

    def holds(self, value: Any, bound: Any) -> bool:
        return value > bound


class AtMost(_Bound):
    """value <= bound."""

    symbol = "<="

    def holds(self, value: Any, bound: Any) -> bool:
        return value <= bound


class OneOf:
    """value is one of the listed values."""

    def __init__(self, *values: Any) -> None:
        self.values = values

    def __repr__(self) -> str:
        return f"OneOf{self.values!r}"

    def violation(self, value: Any, context: Any) -> str | None:
        return None if value in self.values else f"one of {', '.join(map(str, self.values))}"


Rule = _Bound | OneOf


@dataclass(frozen=True)
class Declared:
    """What an option's declaration allows: its types (empty: any) and its rules."""

    types: tuple[type, ...] = ()
    rules: tuple[Rule, ...] = ()

    def check(self, label: str, value: Any, context: Any = None) -> None:
        """A RuleError `label=value is invalid: it must be ...` unless the declaration allows the value."""
        if self.types and not _has_type(value, self.types):
            raise RuleError(f"{label}={value!r} is invalid: it must be {_type_words(self.types)}")
        if value is None:
            return
        for rule in self.rules:
            broken = rule.violation(value, context)
            if broken:
                kind = _type_words(t for t in self.types if t is not type(None)) or "a value"
                what = broken if isinstance(rule, OneOf) else f"{kind} {broken}"
                nullable = ", or null" if type(None) in self.types else ""
                raise RuleError(f"{label}={value!r} is invalid: it must be {what}{nullable}")


def _has_type(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (isinstance(value, int) and float in kinds)


def _type_words(kinds: Iterable[type]) -> str:
    return " or ".join(TYPE_WORDS.get(k, k.__name__) for k in kinds)


def _types(hint: Any) -> tuple[type, ...]:
    """The classes a hint names (int, int | None, Optional[float] ...); () for anything else (not checked)."""
    if get_origin(hint) in (Union, types.UnionType):
        members = tuple(_types(arg) for arg in get_args(hint))
        return sum(members, ()) if all(members) else ()
    return (hint,) if hint in TYPE_WORDS else ()


def declared(hint: Any) -> Declared:
    """The declaration an annotation makes: `Annotated[int, AtLeast(1)]`, or a plain type."""
    if get_origin(hint) is Annotated:
        base, *extras = get_args(hint)
        return Declared(_types(base), tuple(e for e in extras if isinstance(e, Rule)))
    return Declared(_types(hint))


def declarations(function: Callable[..., Any], names: Iterable[str]) -> dict[str, Declared]:
    """Each named parameter's declaration, from the function's annotations (evaluated: postponed ones too)."""
    hints = typing.get_type_hints(function, include_extras=True)
    return {name: declared(hints.get(name, Any)) for name in names}
