"""Typed method configs (methods/config.py): every yaml builds, and what a schema forbids is refused by name.

Generic over conf/method/*.yaml: the bad values are derived from each method's own schema (its
declared ranges, choices and types), not listed per method.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hydra.utils import get_class, instantiate
from torch import nn

from methods import create_method, list_methods
from methods.base import CompressionMethod, MethodConfigError
from methods.config import Constraint, FineTuning, LayerSelection, parse_config, select_layers
from methods.registry import method_config
from tests.conftest import CONF_DIR


def _class(name: str) -> type:
    return get_class(str(method_config(name)._target_))


def _schema(name: str) -> type | None:
    """The method class's ``Config`` schema (methods/config.py), None for a method without one."""
    return getattr(_class(name), "Config", None)


TYPED = [name for name in list_methods() if _schema(name) is not None]
#: the typed methods that have keys to get wrong (baseline has none)
WITH_KEYS = [name for name in TYPED if dataclasses.fields(_schema(name))]  # type: ignore[arg-type]


def _violations(schema: type, prefix: str = "") -> list[tuple[str, typing.Any, str]]:
    """(key path, bad value, text the error must contain) for every constrained or typed field."""
    hints = typing.get_type_hints(schema)
    out: list[tuple[str, typing.Any, str]] = []
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _violations(hint, f"{key}.")
            continue
        out.append((key, object(), key))  # no field takes an arbitrary object
        c: Constraint | None = f.metadata.get("constraint")
        if c is None:
            continue
        if c.choices is not None:
            bad = "no-such-choice"
            out.append((key, [bad] if typing.get_origin(hint) is list else bad, key))
        for bound, delta in ((c.ge, -1), (c.gt, 0), (c.le, 1), (c.lt, 0)):
            if bound is not None:
                out.append((key, bound + delta if delta else bound, key))
    return out


def _nest(key: str, value: typing.Any) -> dict[str, typing.Any]:
    head, _, rest = key.partition(".")
    return {head: _nest(rest, value) if rest else value}


def test_every_method_is_typed() -> None:
    assert TYPED == list_methods()


@pytest.mark.parametrize("name", list_methods())
def test_every_method_yaml_builds_with_its_defaults(name: str) -> None:
    method = create_method(name)
    schema = type(method).Config  # type: ignore[attr-defined]
    assert isinstance(method.config, schema)  # type: ignore[attr-defined]
    assert {str(k) for k in method_config(name)} - {"_target_", "name"} <= {f.name for f in dataclasses.fields(schema)}


@pytest.mark.parametrize("name", WITH_KEYS)
def test_bad_values_are_refused_naming_the_key(name: str) -> None:
    cls = _class(name)
    schema = _schema(name)
    assert schema is not None
    cases = _violations(schema)
    assert cases
    for key, value, text in cases:
        with pytest.raises(MethodConfigError, match=rf"method\.{text}\b"):
            cls(**_nest(key, value))


@pytest.mark.parametrize("name", TYPED)
def test_unknown_and_renamed_keys_are_refused_with_the_fix(name: str) -> None:
    cls = _class(name)
    with pytest.raises(MethodConfigError, match=r"method\.no_such_key is not a key .*its keys: "):
        cls(no_such_key=1)
    fields = {f.name for f in dataclasses.fields(_schema(name))}  # type: ignore[arg-type]
    if "finetune" in fields:
        with pytest.raises(MethodConfigError, match=r"method\.finetune_epochs is now method\.finetune\.epochs"):
            cls(finetune_epochs=1.0)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiments_method_block_builds(compose_cfg, experiment: str) -> None:
    """An experiment's ``method:`` block merges into the yaml without a check: building it is the check."""
    cfg = compose_cfg(f"+experiment={experiment}")
    if "method" in cfg:
        assert isinstance(instantiate(cfg.method, _convert_="all"), CompressionMethod)


def test_a_nested_override_keeps_the_other_defaults() -> None:
    method = create_method("magnitude", finetune={"epochs": 0.5})
    assert method.config.finetune == FineTuning(0.5, None)
    assert create_method("agp").config.finetune.epochs == 4.0  # the yaml's value, not the class default


def test_layer_selection_is_one_vocabulary_resolved_on_the_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    shape = (1, 3, 8, 8)
    assert list(select_layers(model, shape, LayerSelection())) == ["0", "2", "4"]
    assert list(select_layers(model, shape, LayerSelection(first=False, last=False))) == ["2"]
    assert list(select_layers(model, shape, LayerSelection(types=["conv"], exclude=["2"]))) == ["0"]
    with pytest.raises(MethodConfigError, match=r"method\.layers\.exclude entry 'conv9' matches no .* 0, 2, 4"):
        select_layers(model, shape, LayerSelection(exclude=["conv9"]))
    with pytest.raises(MethodConfigError, match=r"method\.layers\.types\[0\] must be one of"):
        parse_config(LayerSelection, {"types": ["rnn"]}, "method.layers")
