"""Codecs of one tensor each: raw bytes, a constant, packed integers, affine and fixed-point words.

* ``raw``: the tensor's own bytes at its dtype (float32 biases, fp16 / bf16 weights, int64
  counters) -- what is not compressed is stored as it is;
* ``fill``: a tensor of one value (no bytes at all; zero-points of symmetric quantization);
* ``packed``: integers at ``bits`` bits each (:mod:`methods.storage.bits`);
* ``affine``: uniform affine quantization (Jacob et al., CVPR 2018, Sec. 2):
  ``scale * (q - zero_point)`` with ``q`` packed at ``bits`` bits and ``scale`` /
  ``zero_point`` the named tensors stored before it (per tensor or per channel along ``axis``);
* ``fixed_point``: ``q * 2**-FL`` (Gupta et al. 2015; Courbariaux et al. 2014) with ``q``
  packed at the word length and one FL per tensor (a field) or per channel (int8 part).
* ``sign``: binary weights ``scale * (+1 | -1)`` (BinaryConnect, XNOR-Net, LAB): one bit per
  weight (1 = +1) and float32 scales, one per tensor or one per channel along ``axis``.

Every codec's ``*_entry`` writes what its registered decoder reads back.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from methods.storage.bits import pack_bits, unpack_bits
from methods.storage.container import StorageError, TensorEntry, register_codec

if sys.byteorder != "little":  # raw parts are the host's bytes; the format is little-endian
    raise ImportError("methods.storage reads and writes little-endian bytes; this host is big-endian")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_of(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise StorageError(f"unknown stored dtype {name!r}")
    return dtype


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The bytes of ``tensor`` at its own dtype (bfloat16 included, which numpy lacks)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_from(data: bytes, dtype: torch.dtype, count: int) -> torch.Tensor:
    if count == 0:
        return torch.zeros(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype, count=count).clone()


def along(t: torch.Tensor, ndim: int, axis: int | None) -> torch.Tensor:
    """Per-channel ``t`` shaped to broadcast along ``axis`` of an ``ndim``-dim tensor."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


@register_codec("raw")
def _decode_raw(entry: TensorEntry, decoded: Any) -> torch.Tensor:
    return tensor_from(entry.data("values"), dtype_of(entry.fields["dtype"]), entry.numel)


def raw_entry(name: str, tensor: torch.Tensor, kind: str = "other", dtype: torch.dtype | None = None) -> TensorEntry:
    """``tensor`` stored as it is (cast to ``dtype`` first when given)."""
    tensor = tensor.detach() if dtype is None else tensor.detach().to(dtype)
    entry = TensorEntry(name, "raw", tuple(tensor.shape), {"dtype": dtype_name(tensor.dtype)})
    entry.add("values", tensor_bytes(tensor), kind)
    return entry


@register_codec("fill")
def _decode_fill(entry: TensorEntry, decoded: Any) -> torch.Tensor:
    return torch.full(entry.shape, entry.fields["value"], dtype=dtype_of(entry.fields["dtype"]))


def fill_entry(name: str, shape: tuple[int, ...], value: float, dtype: torch.dtype) -> TensorEntry:
    """A tensor of one value: only its header entry is stored."""
    return TensorEntry(name, "fill", tuple(shape), {"value": value, "dtype": dtype_name(dtype)})


@register_codec("packed")
def _decode_packed(entry: TensorEntry, decoded: Any) -> torch.Tensor:
    f = entry.fields
    return torch.from_numpy(unpack_bits(entry.data("values"), f["bits"], entry.numel, f["signed"]))


def packed_entry(name: str, values: torch.Tensor, bits: int, signed: bool, kind: str) -> TensorEntry:
    """Integers at ``bits`` bits each (decoded as int64; loading casts them to the model's dtype)."""
    entry = TensorEntry(name, "packed", tuple(values.shape), {"bits": int(bits), "signed": bool(signed)})
    entry.add("values", pack_bits(values, bits, signed), kind)
    return entry


@register_codec("affine")
def _decode_affine(entry: TensorEntry, decoded: Any) -> torch.Tensor:
    f = entry.fields
    for key in ("scale", "zero_point"):
        if f[key] not in decoded:
            raise StorageError(f"affine tensor {entry.name!r} names {key} {f[key]!r}, which is not stored before it")
    q = torch.from_numpy(unpack_bits(entry.data("codes"), f["bits"], entry.numel, f["signed"])).reshape(entry.shape)
    scale = along(decoded[f["scale"]], q.dim(), f["axis"])
    zero_point = along(decoded[f["zero_point"]], q.dim(), f["axis"])
    return (q.to(torch.float32) - zero_point.to(torch.float32)) * scale


def affine_entry(name: str, codes: torch.Tensor, bits: int, signed: bool, scale: str, zero_point: str,
                 axis: int | None, kind: str = "weights") -> TensorEntry:
    """Integer ``codes`` of an affine-quantized tensor; ``scale`` and ``zero_point`` name stored tensors."""
    fields = {"bits": int(bits), "signed": bool(signed), "axis": axis, "scale": scale, "zero_point": zero_point}
    entry = TensorEntry(name, "affine", tuple(codes.shape), fields)
    entry.add("codes", pack_bits(codes, bits, signed), kind)
    return entry


@register_codec("fixed_point")
def _decode_fixed_point(entry: TensorEntry, decoded: Any) -> torch.Tensor:
    f = entry.fields
    q = torch.from_numpy(unpack_bits(entry.data("values"), f["word_length"], entry.numel, True)).float()
    q = q.reshape(entry.shape)
    if "fraction_bits" in entry.parts:  # one FL per channel
        fraction = torch.from_numpy(np.frombuffer(entry.data("fraction_bits"), dtype=np.int8).astype(np.float32))
        return q * torch.pow(2.0, -along(fraction, q.dim(), f["axis"]))
    return q * 2.0 ** -f["fraction_bits"]


def fixed_point_entry(name: str, codes: torch.Tensor, word_length: int, fraction_bits: torch.Tensor | int,
                      axis: int | None) -> TensorEntry:
    """Signed ``word_length``-bit ``codes`` of ``x ~ codes * 2**-FL``, FL one int or one per channel."""
    fields: dict[str, Any] = {"word_length": int(word_length), "axis": axis}
    entry = TensorEntry(name, "fixed_point", tuple(codes.shape), fields)
    entry.add("values", pack_bits(codes, word_length, signed=True), "weights")
    fraction = torch.as_tensor(fraction_bits)
    if fraction.dim() == 0:
        fields["fraction_bits"] = int(fraction)
    else:
        entry.add("fraction_bits", fraction.numpy().astype(np.int8).tobytes(), "scale")
    return entry


@register_codec("sign")
def _decode_sign(entry: TensorEntry, decoded: Any) -> torch.Tensor:
    f = entry.fields
    signs = torch.from_numpy(unpack_bits(entry.data("signs"), 1, entry.numel)).reshape(entry.shape)
    count = 1 if f["axis"] is None else entry.shape[f["axis"]]
    scales = tensor_from(entry.data("scales"), torch.float32, count)
    return (signs * 2 - 1).to(torch.float32) * along(scales, signs.dim(), f["axis"])


def sign_entry(name: str, positive: torch.Tensor, scale: torch.Tensor, axis: int | None) -> TensorEntry:
    """A binary tensor ``scale * (+1 where positive, else -1)``; ``scale`` a scalar or one per channel along ``axis``."""
    entry = TensorEntry(name, "sign", tuple(positive.shape), {"axis": axis})
    entry.add("signs", pack_bits(positive.to(torch.int64), 1), "weights")
    entry.add("scales", tensor_bytes(scale.to(torch.float32)), "scale")
    return entry


def dense_entries(state: Mapping[str, torch.Tensor]) -> list[TensorEntry]:
    """A whole state dict stored as it is: its float tensors as ``weights``, the rest (BN step counters) ``other``."""
    return [raw_entry(name, tensor, "weights" if tensor.is_floating_point() else "other") for name, tensor in state.items()]


def state_entries(state: Mapping[str, torch.Tensor], encoded: Mapping[str, TensorEntry]) -> list[TensorEntry]:
    """Entries for a whole state dict: the ``encoded`` ones where given, the rest raw (kind ``other``)."""
    return [encoded[name] if name in encoded else raw_entry(name, tensor) for name, tensor in state.items()]
