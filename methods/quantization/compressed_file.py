"""A compressed model as tensors with codecs, stored in :mod:`methods.quantization.packing`'s container.

DESIGN.md asks that the stored size of a compressed model be the size of the file the
method really writes, and that the evaluated model be decoded from that file. The
container (``save_parts`` / ``load_parts``: magic, JSON header, raw parts) and the
bit-packing of 1..8-bit codes are :mod:`methods.quantization.packing`'s; this module adds
what ``fixed_point``, ``kmeans``, ``pq``, ``huffman`` and ``deep_compression`` share on
top of it:

* :class:`TensorEntry`: one tensor of the state dict, its *codec* (``float32``,
  ``fixed_point``, ``codebook``, ``pq`` ...) with the codec's fields, and its parts, each
  tagged with the kind of bytes it holds (``weights``: codes, quantized integers or the
  Huffman stream of them; ``index``: sparse positions; ``codebook``: centroids;
  ``table``: Huffman tables; ``scale``: per-group fixed-point exponents; ``other``: tensors kept in float32 such as biases).
  :func:`methods.quantization.packing.part_sizes` splits the file by these kinds.
* a registry of decoders by codec name (:func:`register_codec`), so a new format is a new
  function, not a new branch;
* :func:`pack_wide` / :func:`unpack_wide`: integers of any width 1..32 stored at exactly
  that width (whole bytes raw, the remaining bits packed by ``pack_bits``), for
  fixed-point words such as 16 or 12 bits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from methods.quantization.packing import Part, load_parts, pack_bits, save_parts, unpack_bits

KINDS = ("weights", "index", "codebook", "table", "scale", "other")

#: codec name -> decoder(entry fields + "shape", {part role: Part}) -> float32 tensor of the entry's shape
_DECODERS: dict[str, Callable[[dict[str, Any], dict[str, Part]], torch.Tensor]] = {}


class CompressedFileError(ValueError):
    """A compressed-model file is malformed or uses a codec nobody registered."""


def register_codec(name: str) -> Callable:
    """Decorator registering ``decoder(fields, parts) -> tensor`` for codec ``name``."""

    def wrap(fn: Callable[[dict[str, Any], dict[str, Part]], torch.Tensor]):
        _DECODERS[name] = fn
        return fn

    return wrap


@dataclass
class TensorEntry:
    """One tensor of the model in the file: codec, shape, codec fields and its parts by role."""

    name: str
    codec: str
    shape: tuple[int, ...]
    fields: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Part] = field(default_factory=dict)

    def add(self, role: str, part: Part, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        part.name = f"{self.name}:{role}"
        part.info["kind"] = kind
        self.parts[role] = part

    def add_bytes(self, role: str, data: bytes, kind: str) -> None:
        """A part of raw bytes whose layout the codec's fields describe (keeps the header small)."""
        self.add(role, Part("", bytes(data), {}), kind)

    def kind_bytes(self) -> dict[str, int]:
        sizes = dict.fromkeys(KINDS, 0)
        for part in self.parts.values():
            sizes[part.info["kind"]] += part.nbytes
        return sizes


@register_codec("float32")
def _decode_float32(fields: dict[str, Any], parts: dict[str, Part]) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(parts["values"].data, dtype="<f4").copy())


def float32_entry(name: str, tensor: torch.Tensor, kind: str = "other") -> TensorEntry:
    """A tensor kept as raw little-endian float32 (biases, batch-norm statistics ...)."""
    entry = TensorEntry(name, "float32", tuple(tensor.shape))
    entry.add_bytes("values", tensor.detach().cpu().float().numpy().astype("<f4").tobytes(), kind)
    return entry


def write_model(path: Path, entries: list[TensorEntry], meta: dict[str, Any] | None = None) -> dict[str, int]:
    """Write ``entries`` to ``path``; return ``size_<kind>_bytes`` per kind, ``size_header_bytes``
    and ``size_total_bytes``; the kinds and the header add up to the file size."""
    tensors = [{"name": e.name, "codec": e.codec, "shape": list(e.shape), "fields": e.fields,
                "parts": {role: p.name for role, p in e.parts.items()}} for e in entries]
    parts = [p for e in entries for p in e.parts.values()]
    total = save_parts(path, parts, {"meta": meta or {}, "tensors": tensors})
    sizes = {f"size_{kind}_bytes": 0 for kind in KINDS}
    for entry in entries:
        for kind, n in entry.kind_bytes().items():
            sizes[f"size_{kind}_bytes"] += n
    sizes["size_header_bytes"] = total - sum(sizes.values())
    sizes["size_total_bytes"] = total
    return sizes


def read_model(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Decode every tensor of a file written by :func:`write_model`: (meta, name -> tensor)."""
    header, parts = load_parts(path)
    if "tensors" not in header:
        raise CompressedFileError(f"{path}: a packing container without a tensor list (not written by write_model)")
    tensors: dict[str, torch.Tensor] = {}
    for entry in header["tensors"]:
        decoder = _DECODERS.get(entry["codec"])
        if decoder is None:
            raise CompressedFileError(
                f"{path}: tensor {entry['name']!r} uses codec {entry['codec']!r}; known codecs are "
                f"{sorted(_DECODERS)} (import the method module that registers it)"
            )
        fields = {**entry["fields"], "shape": entry["shape"]}
        tensor = decoder(fields, {role: parts[name] for role, name in entry["parts"].items()})
        tensor = tensor.reshape(entry["shape"])
        tensors[entry["name"]] = tensor
    return header["meta"], tensors


def load_into(template: nn.Module, path: Path) -> nn.Module:
    """A copy of ``template`` whose whole state is decoded from ``path``."""
    _meta, tensors = read_model(path)
    model = copy.deepcopy(template)
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    if missing:
        raise CompressedFileError(f"{path}: the file lacks tensors {missing} of the model")
    model.load_state_dict({k: tensors[k].to(state[k].dtype) for k in state})
    return model


def state_entries(model: nn.Module, encoded: dict[str, TensorEntry]) -> list[TensorEntry]:
    """Entries for the whole state dict: ``encoded`` ones where given, float32 otherwise."""
    return [encoded[name] if name in encoded else float32_entry(name, tensor.float())
            for name, tensor in model.state_dict().items()]


def pack_wide(values: np.ndarray | torch.Tensor, bits: int, signed: bool = True) -> bytes:
    """``bits``-bit integers (1..32) stored at exactly ``bits`` bits each: ``bits // 8`` whole
    low-order bytes per value, then the remaining high bits bit-packed."""
    if not 1 <= bits <= 32:
        raise ValueError(f"word length must be in 1..32 bits, got {bits}")
    flat = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values).astype(np.int64).ravel()
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if flat.size and (flat.min() < lo or flat.max() > hi):
        raise ValueError(f"values in [{flat.min()}, {flat.max()}] do not fit {bits}-bit integers")
    unsigned = flat & ((1 << bits) - 1)
    whole, rest = divmod(bits, 8)
    low = np.stack([(unsigned >> (8 * i)) & 0xFF for i in range(whole)], axis=1).astype(np.uint8) if whole else None
    data = low.tobytes() if low is not None else b""
    if rest:
        data += pack_bits(unsigned >> (8 * whole), rest)
    return data


def unpack_wide(data: bytes, bits: int, count: int, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_wide` (int64)."""
    whole, rest = divmod(bits, 8)
    values = np.zeros(count, dtype=np.int64)
    if whole:
        low = np.frombuffer(data, dtype=np.uint8, count=count * whole).reshape(count, whole).astype(np.int64)
        values = (low << (8 * np.arange(whole, dtype=np.int64))).sum(axis=1)
    if rest:
        values |= unpack_bits(data[count * whole:], rest, count) << (8 * whole)
    if signed:
        values = np.where(values >= (1 << (bits - 1)), values - (1 << bits), values)
    return values
