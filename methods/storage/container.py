"""The one file format compressed models are stored in, its codec registry and its load function.

docs/ARCHITECTURE.md (Contracts) asks that the stored size of a compressed model be the size of the file the method
really writes, and that the evaluated model be decoded from that file. Every method writes
this container:

    b"CBS1" | uint32 little-endian header length | zlib-compressed UTF-8 JSON header | parts' bytes

(files named ``*.cbm``, CompressBench model)

The header is compressed with a preset dictionary of the words headers are made of
(:data:`HEADER_WORDS`, part of the format like Brotli's built-in dictionary), so that a
small model's header costs tens of bytes rather than hundreds.

The header holds the *architecture* the tensors belong to (``template``: the unchanged
architecture of the model handed to :func:`load_model`; other names are registered by the
method that changes the architecture: channel-pruned, fake-quantized, 16-bit, ...), the
method's metadata, and one entry per tensor: its name, its *codec* (``raw``, ``sparse``,
``affine``, ``codebook``, ``pq``, ``fixed_point`` ...) with the codec's fields, and its
parts in file order, each as (role, kind, bytes). The *kind* says what the bytes are
(``weights``, ``index``, ``codebook``, ``scale`` ..., the writer's words), so
:func:`part_sizes` splits the file by kind and the kinds and the header add up to its size.

Nothing is pickled: the header is JSON, the parts are raw bytes that the codecs read.
A new format is a new codec (:func:`register_codec`); a new way of rebuilding a model
from its tensors is a new architecture (:func:`register_architecture`). The header names
the module that registered the architecture, so :func:`load_model` reads any file without
the caller importing the method first (only modules of the ``methods`` package are imported).
"""

from __future__ import annotations

import copy
import importlib
import json
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

MAGIC = b"CBS1"

#: Words of typical headers, the most frequent last (zlib's preset dictionary; changing it changes the format).
HEADER_WORDS = "".join([
    '"extra":{"method":"amc","history":[["layer1.0.conv1",true,[',
    '"input_shape":[1,3,32,32],"channels":{"conv1":16,"fc":10,"downsample":',
    '"plan":{"specs":[{"scheme":{"bits":8,"symmetric":false,"per_channel":true,"ch_axis":0,"signed":false,',
    '"narrow_range":null},"observer":"minmax","observer_kwargs":{},"ema":null}],"layers":{"conv1":["conv",0,1],',
    '"folded":[["conv1","bn1"]],"config":{"act_bits":8,"calibration_batches":',
    '"activations":{"word_length":16,"fraction_bits":12}},"bits":',
    '"codec":"pq","fields":{"subspaces":8,"subvector_length":4,"rows":',
    '"codec":"fixed_point","fields":{"word_length":8,"axis":null,"fraction_bits":',
    '"codec":"codebook","fields":{"bits":5,"zero_code":true,"layout":"sparse","coding":"huffman","index_bits":5,',
    '"n_index":"n_codes":["codes_table","table",["index_table","table",["codebook","codebook",',
    '"codec":"sparse","fields":{"format":"rel4","dtype":"float32","entries":',
    '"format":"csr","dtype":"float32","ptr_bits":11,"col_bits":6},"parts":[["row_ptr","index",["cols","index",',
    '"codec":"affine","fields":{"bits":8,"signed":true,"axis":0,"scale":"conv1.weight_quantizer.scale",',
    '"zero_point":"conv1.weight_quantizer.zero_point"},"parts":[["codes","weight_codes",',
    '"codec":"fill","fields":{"value":0,"dtype":"int32"},"parts":[]},',
    '"codec":"packed","fields":{"bits":8,"signed":false},"parts":[["values","zero_points",',
    '["values","scales",["values","biases",["values","act_qparams",["values","float_rest",',
    '"input_quantizer.scale"input_quantizer.zero_point"',
    '"dtype":"float16"},"parts":[["values","weights16",',
    '"dtype":"bfloat16"},"parts":[["values","weights16",',
    '.running_mean","codec":"raw","shape":[16],"fields":{"dtype":"float32"},"parts":[["values","other",',
    '.running_var","codec":"raw","shape":[16],"fields":{"dtype":"float32"},"parts":[["values","other",',
    '.num_batches_tracked","codec":"raw","shape":[],"fields":{"dtype":"int64"},"parts":[["values","other",8]]},',
    '{"architecture":"fakequant","module":"methods.quantization.fakequant","meta":',
    '{"architecture":"pruned_channels","module":"methods.pruning.structured","meta":',
    '{"architecture":"half","module":"methods.quantization.half","meta":{},"tensors":',
    '{"architecture":"fixed_point","module":"methods.quantization.fixed_point","meta":',
    '{"architecture":"template","module":"methods.storage.container","meta":{"method":"kmeans"},"tensors":[',
    '{"name":"fc.bias","codec":"raw","shape":[10],"fields":{"dtype":"float32"},"parts":[["values","other",',
    '{"name":"conv1.weight","codec":"raw","shape":[64,3,3,3],"fields":{"dtype":"float32"},"parts":[["values","weights",',
]).encode()

#: codec name -> decoder(entry, tensors decoded so far) -> tensor of the entry's shape
Decoder = Callable[["TensorEntry", Mapping[str, torch.Tensor]], torch.Tensor]
_DECODERS: dict[str, Decoder] = {}

#: architecture name -> builder(template, stored state) -> the decoded model
Builder = Callable[[nn.Module, "StoredState"], nn.Module]
_ARCHITECTURES: dict[str, Builder] = {}
_ARCHITECTURE_MODULES: dict[str, str] = {}


class StorageError(ValueError):
    """A stored file is malformed, or uses a codec or an architecture nobody registered."""


def register_codec(name: str) -> Callable[[Decoder], Decoder]:
    """Decorator registering ``decoder(entry, decoded) -> tensor`` for codec ``name``."""

    def wrap(fn: Decoder) -> Decoder:
        _DECODERS[name] = fn
        return fn

    return wrap


def register_architecture(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(template, state) -> model`` for files saved with ``architecture=name``."""

    def wrap(fn: Builder) -> Builder:
        _ARCHITECTURES[name] = fn
        _ARCHITECTURE_MODULES[name] = fn.__module__
        return fn

    return wrap


@dataclass
class TensorEntry:
    """One tensor in the file: codec, shape, codec fields and its parts by role as (kind, bytes).

    A codec's fields may name tensors stored before it (a quantized weight names its scale).
    """

    name: str
    codec: str
    shape: tuple[int, ...]
    fields: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def add(self, role: str, data: bytes, kind: str) -> None:
        self.parts[role] = (kind, bytes(data))

    def data(self, role: str) -> bytes:
        return self.parts[role][1]

    def nbytes(self, role: str) -> int:
        return len(self.parts[role][1])

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n


@dataclass
class StoredState:
    """What a file holds, decoded: its architecture, the method's metadata, every tensor."""

    path: Path
    architecture: str
    module: str  # the module that registers the architecture
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def _sizes(entries: list[TensorEntry], total: int) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for entry in entries:
        for kind, data in entry.parts.values():
            sizes[kind] = sizes.get(kind, 0) + len(data)
    sizes["header"] = total - sum(sizes.values())
    sizes["total"] = total
    return sizes


def save_model(path: str | Path, entries: list[TensorEntry], meta: Mapping[str, Any] | None = None,
               architecture: str = "template") -> dict[str, int]:
    """Write ``entries`` to ``path``; return the bytes of each part kind, ``header`` and ``total``."""
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise StorageError(f"{path}: tensor names must be unique")
    if architecture not in _ARCHITECTURES:
        raise StorageError(f"{path}: architecture {architecture!r} is not registered; known are {sorted(_ARCHITECTURES)}")
    header = {
        "architecture": architecture,
        "module": _ARCHITECTURE_MODULES[architecture],
        "meta": dict(meta or {}),
        "tensors": [{"name": e.name, "codec": e.codec, "shape": [int(s) for s in e.shape], "fields": e.fields,
                     "parts": [[role, kind, len(data)] for role, (kind, data) in e.parts.items()]} for e in entries],
    }
    packer = zlib.compressobj(9, zdict=HEADER_WORDS)
    head = packer.compress(json.dumps(header, separators=(",", ":")).encode()) + packer.flush()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<I", len(head)))
        f.write(head)
        for entry in entries:
            for _kind, data in entry.parts.values():
                f.write(data)
    return _sizes(entries, path.stat().st_size)


def read_entries(path: str | Path) -> tuple[dict[str, Any], list[TensorEntry]]:
    """The header (architecture, meta) and the tensor entries of a file, not decoded."""
    blob = Path(path).read_bytes()
    if blob[:4] != MAGIC:
        raise StorageError(f"{path} is not a CompressBench model file (magic {blob[:4]!r}, expected {MAGIC!r})")
    (head_len,) = struct.unpack("<I", blob[4:8])
    try:
        unpacker = zlib.decompressobj(zdict=HEADER_WORDS)
        header = json.loads((unpacker.decompress(blob[8:8 + head_len]) + unpacker.flush()).decode())
    except (zlib.error, ValueError) as err:
        raise StorageError(f"{path}: corrupt header ({err})") from None
    offset = 8 + head_len
    entries = []
    for item in header["tensors"]:
        entry = TensorEntry(item["name"], item["codec"], tuple(item["shape"]), item["fields"])
        for role, kind, nbytes in item["parts"]:
            data = blob[offset:offset + nbytes]
            if len(data) != nbytes:
                raise StorageError(f"{path}: part {role!r} of {entry.name!r} is truncated")
            entry.add(role, data, kind)
            offset += nbytes
        entries.append(entry)
    if offset != len(blob):
        raise StorageError(f"{path}: {len(blob) - offset} trailing bytes; the file is corrupt")
    return {"architecture": header["architecture"], "module": header["module"], "meta": header["meta"]}, entries


#: part kinds every size report lists (0 when a file has none), as ``size_<kind>_bytes``
SIZE_KINDS = ("weights", "index", "codebook", "table", "scale", "other", "header", "total")


def size_metrics(sizes: Mapping[str, int]) -> dict[str, float]:
    """``size_<kind>_bytes`` for the run's metrics, from the sizes :func:`save_model` returned."""
    return {f"size_{kind}_bytes": float(sizes.get(kind, 0)) for kind in (*SIZE_KINDS, *sorted(set(sizes) - set(SIZE_KINDS)))}


def part_sizes(path: str | Path) -> dict[str, int]:
    """Bytes of a stored file by part kind, plus ``header`` (magic, length, JSON) and ``total``."""
    _header, entries = read_entries(path)
    return _sizes(entries, Path(path).stat().st_size)


def read_state(path: str | Path) -> StoredState:
    """Decode every tensor of a stored file."""
    header, entries = read_entries(path)
    tensors: dict[str, torch.Tensor] = {}
    for entry in entries:
        decoder = _DECODERS.get(entry.codec)
        if decoder is None:
            raise StorageError(f"{path}: tensor {entry.name!r} uses codec {entry.codec!r}; known codecs are "
                               f"{sorted(_DECODERS)}")
        tensors[entry.name] = decoder(entry, tensors).reshape(entry.shape)
    return StoredState(Path(path), header["architecture"], header["module"], header["meta"], tensors)


def load_state_into(model: nn.Module, state: StoredState) -> nn.Module:
    """Load the stored tensors into ``model`` (in place, strict), each cast to the model's dtype."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state.tensors)), sorted(set(state.tensors) - set(own))
    if missing or extra:
        raise StorageError(f"{state.path}: the file's tensors do not match the model: missing {missing}, unexpected {extra}; "
                           "is the template the architecture the file was saved from?")
    model.load_state_dict({k: state.tensors[k].to(own[k].dtype) for k in own}, strict=True)
    return model


def load_model(path: str | Path, template: nn.Module) -> nn.Module:
    """The model a stored file holds, rebuilt on a copy of ``template`` (the uncompressed
    architecture) by the architecture named in the file's header, its tensors decoded."""
    state = read_state(path)
    if state.architecture not in _ARCHITECTURES and state.module.startswith("methods."):
        importlib.import_module(state.module)
    builder = _ARCHITECTURES.get(state.architecture)
    if builder is None:
        raise StorageError(f"{path}: architecture {state.architecture!r} (module {state.module!r}) is not registered; "
                           f"known are {sorted(_ARCHITECTURES)}")
    return builder(template, state)


@register_architecture("template")
def _template(template: nn.Module, state: StoredState) -> nn.Module:
    return load_state_into(copy.deepcopy(template), state)
