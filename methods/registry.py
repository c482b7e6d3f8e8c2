"""The methods' one door, as timm's ``create_model`` is the models': discover, configure, build.

A method is registered by its yaml, ``conf/method/<name>.yaml`` (Hydra ``_target_`` plus the
defaults): the same file the ``+method=<name>`` runs compose, so the yaml is the single source
of a method's defaults for the CLI, the DVC matrix, sweeps and Python alike.

    from methods import create_method, list_methods
    list_methods("*fixed_point")                    # ['dynamic_fixed_point', 'fixed_point']
    method = create_method("magnitude", sparsity=0.9)  # conf/method/magnitude.yaml, sparsity overridden

``python -m methods list`` prints every method with its family and the first paragraph of its
module's docstring.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from methods.base import CompressionMethod, MethodConfigError

#: conf/method/ of this checkout: one yaml per method
METHOD_CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "method"


@dataclass(frozen=True)
class MethodInfo:
    """What ``python -m methods list`` shows about one method, read without importing it."""

    name: str
    target: str  # the class, ``methods.<family>.<module>.<Class>``
    family: str  # the package under methods/ (``pruning``, ``quantization``); "" for methods/<module>.py
    summary: str  # the first paragraph of the module's docstring, on one line
    config_file: Path


def list_methods(pattern: str = "*") -> list[str]:
    """The names of the methods (conf/method/*.yaml) matching a shell-style ``pattern``, sorted."""
    return sorted(p.stem for p in METHOD_CONF_DIR.glob("*.yaml") if fnmatch.fnmatchcase(p.stem, pattern))


def _config_file(name: str) -> Path:
    path = METHOD_CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        available = list_methods()
        close = difflib.get_close_matches(name, available, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MethodConfigError(f"unknown method {name!r}{hint}; available: {', '.join(available)} "
                                f"(one yaml each in {METHOD_CONF_DIR})")
    return path


def method_config(name: str, **overrides: Any) -> DictConfig:
    """``conf/method/<name>.yaml`` with ``overrides`` merged in (nested mappings merge key by key).

    Only keys the yaml declares may be overridden: a misspelt key is an error naming it and the
    valid ones, not a silently ignored or late-failing argument.
    """
    path = _config_file(name)
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or "_target_" not in cfg:
        raise MethodConfigError(f"{path}: a method yaml is a mapping with a _target_ (the method's class)")
    declared = [k for k in cfg if k != "_target_"]
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise MethodConfigError(f"method {name!r} has no key(s) {unknown}; its keys: {', '.join(map(str, declared))} "
                                f"(see {path})")
    return cast(DictConfig, OmegaConf.merge(cfg, OmegaConf.create(overrides))) if overrides else cfg


def create_method(name: str, **overrides: Any) -> CompressionMethod:
    """Build method ``name`` from its yaml, ``overrides`` replacing the yaml's values.

    Instantiated as a run instantiates ``cfg.method`` (Hydra, containers converted), so a method
    built here is the one ``python -m benchmarks +method=<name> method.<key>=<value>`` would use.
    A value the method rejects raises its own :class:`MethodConfigError`, naming the key.
    """
    cfg = method_config(name, **overrides)
    try:
        method = instantiate(cfg, _convert_="all")
    except InstantiationException as err:
        if isinstance(err.__cause__, MethodConfigError):
            raise err.__cause__ from None
        raise
    if not isinstance(method, CompressionMethod):
        raise MethodConfigError(f"{_config_file(name)}: _target_ {cfg._target_} is not a CompressionMethod")
    return method


def method_info(name: str) -> MethodInfo:
    """Name, class, family and summary of method ``name``, from its yaml and its module's source."""
    cfg = method_config(name)
    target = str(cfg._target_)
    module = target.rsplit(".", 1)[0]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise MethodConfigError(f"{_config_file(name)}: _target_ {target}: no module {module}")
    docstring = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""
    parts = module.split(".")
    return MethodInfo(name=name, target=target, family=parts[1] if len(parts) > 2 else "",
                      summary=" ".join(docstring.split("\n\n")[0].split()), config_file=_config_file(name))
