"""Devices are yaml files: discover them in conf/hw/, instantiate one by name.

Adding a device is one yaml in ``conf/hw/`` (docs/ARCHITECTURE.md, "Walk-through: add a device"): this module only reads
what is there. Each yaml names its class (``_target_``), and may state ``name``,
``source`` (measured, table, analytical) and ``calibration`` (measured, published,
spec-sheet); a yaml without ``source`` gets its class's ``source`` attribute, imported
lazily, so ``python -m hardware list`` works for every file without building a target.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hardware.target import HardwareError


def default_conf_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "conf" / "hw"


@dataclass(frozen=True)
class DeviceEntry:
    """One conf/hw/<name>.yaml as ``python -m hardware list`` shows it."""

    name: str
    path: Path
    target: str
    kind: str
    calibration: str
    description: str

    def as_row(self) -> dict[str, str]:
        return {
            "name": self.name,
            "kind": self.kind,
            "calibration": self.calibration,
            "target": self.target,
            "description": self.description,
        }


def _class_attribute(target: str, attribute: str) -> str | None:
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return None
    value = getattr(cls, attribute, None)
    return value if isinstance(value, str) else None


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("# @package"):
            return stripped.lstrip("#").strip()
        if stripped and not stripped.startswith("#"):
            break
    return ""


def discover(conf_dir: Path | None = None) -> dict[str, DeviceEntry]:
    """Every device in ``conf_dir`` (default conf/hw), keyed by file stem (what ``+hw=`` takes)."""
    conf_dir = Path(conf_dir) if conf_dir is not None else default_conf_dir()
    devices: dict[str, DeviceEntry] = {}
    for path in sorted(conf_dir.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict) or "_target_" not in data:
            continue
        target = str(data["_target_"])
        kind = data.get("source") or data.get("kind") or _class_attribute(target, "source") or "?"
        calibration = data.get("calibration") or "?"
        devices[path.stem] = DeviceEntry(path.stem, path, target, str(kind), str(calibration), _first_comment(path))
    return devices


def known_names(conf_dir: Path | None = None) -> list[str]:
    return sorted(discover(conf_dir))


def load_config(name: str, overrides: dict[str, Any] | None = None, conf_dir: Path | None = None) -> dict[str, Any]:
    """The yaml of device ``name`` as a dict, with ``overrides`` applied (dotted keys allowed)."""
    devices = discover(conf_dir)
    if name not in devices:
        where = Path(conf_dir) if conf_dir is not None else default_conf_dir()
        raise HardwareError(
            f"unknown hw {name!r}; known devices: {', '.join(sorted(devices)) or '(none)'}. "
            f"Add a device with {where / (name + '.yaml')} (see `python -m hardware list`)."
        )
    config = yaml.safe_load(devices[name].path.read_text(encoding="utf-8"))
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def instantiate(name: str, overrides: dict[str, Any] | None = None, conf_dir: Path | None = None):
    """Build device ``name`` the way the run pipeline does (``hydra.utils.instantiate``)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate
    from omegaconf import OmegaConf

    config = load_config(name, overrides, conf_dir)
    try:
        return hydra_instantiate(OmegaConf.create(config))
    except InstantiationException as error:
        # hydra wraps the target's own error; a HardwareError already says what to do
        cause = error.__cause__
        if isinstance(cause, HardwareError):
            raise cause from None
        if isinstance(cause, ValueError):  # a target's own check of a key (hw.batch_size must be >= 1)
            raise HardwareError(str(cause)) from None
        raise


def build(spec: str | Mapping[str, Any]):
    """A device named by another device's yaml: its name in conf/hw, or its config inlined as a mapping."""
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(dict(spec)) if isinstance(spec, Mapping) else instantiate(str(spec))


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings (values parsed as YAML: 1, null, true, [1,2]) to a dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HardwareError(f"override {item!r} is not key=value (e.g. --set threads=1)")
        out[key.strip()] = yaml.safe_load(value)
    return out
