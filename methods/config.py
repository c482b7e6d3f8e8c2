"""Typed method configs: each method declares its yaml keys once, as a dataclass, and is built through it.

A method's ``Config`` dataclass lists its keys with their types, defaults and constraints
(:func:`option`: ranges, choices); :func:`parse_config` builds it from the yaml's values and
refuses, with a message naming ``method.<key>``, the value and what would be valid:

* a key the schema does not have (with the new name of a renamed key, or the close match);
* a value of the wrong type (``sparsity: high``);
* a value outside its range or choices (``sparsity: 1.5``, ``scope: row``);
* what the schema's own ``check(key)`` refuses across keys (``scope: global`` with per-layer sparsities).

Two sub-schemas give every method the same words for the same thing: :class:`FineTuning`
(``finetune: {epochs, lr}``) and :class:`LayerSelection` (``layers: {types, exclude, first, last}``,
resolved against a model by :func:`select_layers`, one function for every method), in the spirit
of NNI's ``config_list``. Errors that depend on the model (a layer name it lacks) stay at compress time.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class MethodConfigError(ValueError):
    """A method was asked for something impossible (sparsity >= 1, 0 bits, ...)."""


#: Keys of the method yamls before issue 10's one vocabulary, and what replaced them.
RENAMED = {
    "finetune_epochs": "finetune.epochs", "finetune_lr": "finetune.lr", "lr": "finetune.lr", "epochs": "finetune.epochs",
    "ssl_epochs": "sparsify.epochs", "include_first": "layers.first", "include_last": "layers.last",
    "exclude": "layers.exclude", "ignored_layers": "layers.exclude", "skip_layers": "layers.exclude",
    "layer_types": "layers.types",
}


@dataclass(frozen=True)
class Constraint:
    """What a value (or each value of a list or mapping) must satisfy; ``why`` ends the error message."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    why: str = ""

    def problem(self, value: Any) -> str | None:
        """A message for a value that violates the constraint, or None."""
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {list(self.choices)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        low_ok = (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
        high_ok = (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
        if low_ok and high_ok:
            return None
        low = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else "(-inf"
        high = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else "inf)"
        if high == "inf)":
            return f"must be {'>=' if self.ge is not None else '>'} {_num(self.ge if self.ge is not None else self.gt)}"
        return f"must be in {low}, {high}"


def _num(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def option(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: Sequence[Any] | None = None, why: str = "") -> Any:
    """A schema field with its constraint; ``factory`` for mutable defaults (lists, dicts, sub-schemas)."""
    constraint = Constraint(ge, gt, le, lt, tuple(choices) if choices is not None else None, why)
    if factory is not None:
        return field(default_factory=factory, metadata={"constraint": constraint})
    return field(default=default, metadata={"constraint": constraint})


def fail(key: str, message: str) -> typing.NoReturn:
    raise MethodConfigError(f"{key} {message}")


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(value: Any, annotation: Any, key: str, default: Any = None) -> Any:
    """``value`` as ``annotation`` (float, int, bool, str, X | None, list[X], dict[str, X], a schema)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms:
            try:
                return _coerce(value, arm, key, default)
            except MethodConfigError:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in arms) + (" or null" if type(None) in args else "")
        fail(key, f"must be {names}, got {_describe(value)}")
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            fail(key, f"must be a mapping with keys {[f.name for f in dataclasses.fields(annotation)]}, "
                      f"got {_describe(value)}")
        base = dataclasses.asdict(default) if dataclasses.is_dataclass(default) and not isinstance(default, type) else {}
        return parse_config(annotation, {**base, **value}, key)
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            fail(key, f"must be a list, got {_describe(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:  # fixed length, tuple[X, Y]: a yaml list of that many values
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != len(args):
            fail(key, f"must be a list of {len(args)} values, got {_describe(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            fail(key, f"must be a mapping, got {_describe(value)}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        fail(key, f"must be true or false, got {_describe(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        fail(key, f"must be an integer, got {_describe(value)}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        fail(key, f"must be a number, got {_describe(value)}")
    if annotation is str:
        if isinstance(value, str):
            return value
        fail(key, f"must be a string, got {_describe(value)}")
    raise TypeError(f"{key}: parse_config has no rule for the annotation {annotation!r}")


def _check(value: Any, constraint: Constraint, key: str) -> None:
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else None
    if items is None:
        problem = constraint.problem(value) if value is not None else None
        if problem:
            fail(key, f"{problem}{f' ({constraint.why})' if constraint.why else ''}, got {value!r}")
        return
    for k, v in items:
        _check(v, constraint, f"{key}.{k}" if isinstance(value, Mapping) else f"{key}[{k}]")


def _unknown_key(name: str, known: Sequence[str], key: str) -> typing.NoReturn:
    new = RENAMED.get(name)
    if new is not None and new.split(".")[0] in known:
        fail(f"{key}.{name}", f"is now {key}.{new} (one vocabulary for every method, issue 10)")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    fail(f"{key}.{name}", f"is not a key of this method{hint}; its keys: {', '.join(known)}")


S = TypeVar("S", bound="DataclassInstance")


def parse_config(schema: type[S], options: Mapping[str, Any], key: str = "method") -> S:
    """Build ``schema`` from ``options`` (its defaults for absent keys); errors name ``key.<field>``."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for name in options:
        if name not in fields:
            _unknown_key(str(name), list(fields), key)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if name not in options:
            if default is dataclasses.MISSING:
                fail(f"{key}.{name}", "is required")
            values[name] = default
            continue
        value = _coerce(options[name], hints[name], f"{key}.{name}", default)
        constraint = f.metadata.get("constraint")
        if constraint is not None:
            _check(value, constraint, f"{key}.{name}")
        values[name] = value
    try:
        config = schema(**values)
    except MethodConfigError:
        raise
    except ValueError as err:  # a schema's own __post_init__ (methods.search's DDPGConfig); its message names the key
        raise MethodConfigError(str(err)) from None
    check = getattr(config, "check", None)
    if check is not None:
        check(key)
    return config


@dataclass
class FineTuning:
    """Training of the compressed model with the run's recipe: ``epochs`` (fractions allowed), ``lr`` (null: the recipe's)."""

    epochs: float = option(1.0, ge=0)
    lr: float | None = option(None, gt=0, why="null: the recipe's learning rate")


def finetune_default(epochs: float, lr: float | None = None) -> Callable[[], FineTuning]:
    """A default factory for a method's ``finetune``-like field."""
    return lambda: FineTuning(epochs, lr)


#: ``layers.types``: the module classes each word selects
#: the layers a selection picks from
Layer = nn.Conv2d | nn.Linear
LAYER_TYPES: dict[str, tuple[type[Layer], ...]] = {"conv": (nn.Conv2d,), "linear": (nn.Linear,)}


@dataclass
class LayerSelection:
    """Which layers a method compresses, the same words for every method.

    ``types``: the kinds of layer (``conv``, ``linear``); ``exclude``: layer names or shell patterns
    (``features.*``) left untouched; ``first`` / ``last``: whether the first layer in forward order
    (it sees the raw input) and the last (the classifier) are included.
    """

    types: list[str] = option(factory=lambda: ["conv", "linear"], choices=tuple(LAYER_TYPES))
    exclude: list[str] = option(factory=list)
    first: bool = True
    last: bool = True


def forward_order(model: nn.Module, input_shape: Sequence[int], classes: tuple[type[nn.Module], ...]) -> list[str]:
    """Names of the modules of ``classes`` in the order one forward pass calls them."""
    order: list[str] = []
    handles = [m.register_forward_hook(lambda *_, name=n: order.append(name))
               for n, m in model.named_modules() if isinstance(m, classes)]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return list(dict.fromkeys(order))


def select_layers(model: nn.Module, input_shape: Sequence[int], selection: LayerSelection,
                  key: str = "method.layers") -> dict[str, Layer]:
    """The layers ``selection`` picks in ``model``, in forward order; a pattern matching nothing is an error."""
    classes = tuple(c for t in selection.types for c in LAYER_TYPES[t])
    order = forward_order(model, input_shape, classes)
    if not order:
        fail(f"{key}.types", f"{selection.types}: the model has no such layer")
    for pattern in selection.exclude:
        if not fnmatch.filter(order, pattern):
            fail(f"{key}.exclude", f"entry {pattern!r} matches no {'/'.join(selection.types)} layer; "
                                   f"the model's: {', '.join(order)}")
    skip = {n for n in order if any(fnmatch.fnmatchcase(n, p) for p in selection.exclude)}
    if not selection.first:
        skip.add(order[0])
    if not selection.last:
        skip.add(order[-1])
    modules = {n: m for n, m in model.named_modules() if isinstance(m, classes)}
    chosen = {n: modules[n] for n in order if n not in skip}
    if not chosen:
        fail(key, f"{dataclasses.asdict(selection)} leaves no layer; the model's: {', '.join(order)}")
    return chosen


def excluded_layers(model: nn.Module, input_shape: Sequence[int], selection: LayerSelection,
                    key: str = "method.layers") -> list[str]:
    """The conv/linear layers ``selection`` leaves out, in forward order: a structured pruner's ignored layers."""
    chosen = select_layers(model, input_shape, selection, key)
    every = forward_order(model, input_shape, tuple(c for classes in LAYER_TYPES.values() for c in classes))
    return [n for n in every if n not in chosen]
