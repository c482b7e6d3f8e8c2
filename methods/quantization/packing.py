"""Bit-packing of N-bit integers, and the binary container compressed models are written in.

Storage size must be the size of the file a method really writes (DESIGN.md), so ``b``-bit
codes are stored as ``b`` bits each, not as int8 or int32: ``count`` codes take
``ceil(count * b / 8)`` bytes. Codes are laid out little-endian bit-first (code ``i`` occupies
bits ``i*b .. i*b + b - 1`` of the stream, least significant bit first), for any ``b`` in 1..8;
signed codes are stored as their ``b``-bit two's complement and sign-extended on unpacking.

The container (:func:`save_parts` / :func:`load_parts`) is a small self-describing format:

    b"CBQ1" | uint32 little-endian header length | zlib-compressed UTF-8 JSON header | the parts' bytes

The JSON header holds the caller's metadata and, for each part in file order, its name, length and
a description (dtype and shape of raw arrays; bits, signedness, count and shape of packed codes).
Every byte of every part is in the file, so ``os.path.getsize`` is the honest stored size and
:func:`part_sizes` splits it by kind (codes, scales, biases, ...).

This is the shared low-level piece of the quantization family: uniform quantization (ptq, qat,
pact) stores packed integer weights here, and weight sharing (k-means, product quantization)
stores packed cluster indices the same way.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"CBQ1"


class PackingError(ValueError):
    """Codes that do not fit their bit-width, a corrupt file, an unknown part."""


def _check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise PackingError(f"bits must be an integer in 1..8 for bit-packing, got {bits!r}")


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes taken by ``count`` codes of ``bits`` bits."""
    _check_bits(bits)
    return (count * bits + 7) // 8


def _as_int64(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.dtype.kind not in "iub":
        raise PackingError(f"only integer codes can be bit-packed, got dtype {values.dtype}")
    return values.astype(np.int64).reshape(-1)


def pack_bits(values: np.ndarray | torch.Tensor, bits: int, signed: bool = False) -> bytes:
    """Pack integer codes into ``ceil(count * bits / 8)`` bytes.

    Unsigned codes must lie in ``[0, 2**bits)``, signed ones in ``[-2**(bits-1), 2**(bits-1))``.
    """
    _check_bits(bits)
    flat = _as_int64(values)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if flat.size and (flat.min() < lo or flat.max() > hi):
        kind = "signed" if signed else "unsigned"
        raise PackingError(
            f"codes in [{flat.min()}, {flat.max()}] do not fit {bits}-bit {kind} integers [{lo}, {hi}]"
        )
    codes = (flat & ((1 << bits) - 1)).astype(np.uint8)  # two's complement low bits for signed
    if bits == 8:
        return codes.tobytes()
    bit_matrix = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int, signed: bool = False) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` codes as int64 (sign-extended when ``signed``)."""
    _check_bits(bits)
    need = packed_nbytes(count, bits)
    if len(data) < need:
        raise PackingError(f"{count} codes of {bits} bits need {need} bytes, got {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    if bits == 8:
        codes = raw.astype(np.int64)
    else:
        stream = np.unpackbits(raw, bitorder="little")[: count * bits].reshape(count, bits)
        codes = (stream.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(axis=1)
    if signed:
        codes = np.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)
    return codes


# --------------------------------------------------------------------------------------------
# Container
# --------------------------------------------------------------------------------------------


@dataclass
class Part:
    """One stored piece of a model: its bytes and how to read them back."""

    name: str
    data: bytes
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.data)


def array_part(name: str, array: np.ndarray | torch.Tensor, kind: str = "tensor", **info: Any) -> Part:
    """A raw little-endian array (fp32 biases, fp16 weights, scales, ...)."""
    if isinstance(array, torch.Tensor):
        if array.dtype == torch.bfloat16:  # numpy has no bfloat16: store the 16-bit patterns
            bits16 = array.detach().cpu().contiguous().view(torch.int16).numpy()
            return Part(name, bits16.astype("<i2").tobytes(),
                        {"layout": "raw", "dtype": "bfloat16", "shape": list(array.shape), "kind": kind, **info})
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder not in "|<=" else array.dtype
    return Part(name, array.astype(dtype).tobytes(),
                {"layout": "raw", "dtype": array.dtype.name, "shape": list(array.shape), "kind": kind, **info})


def packed_part(name: str, codes: np.ndarray | torch.Tensor, bits: int, signed: bool = False, kind: str = "codes",
                **info: Any) -> Part:
    """Integer codes bit-packed to ``bits`` bits each; the shape is kept for unpacking."""
    shape = list(codes.shape)
    count = int(np.prod(shape)) if shape else 1
    return Part(name, pack_bits(codes, bits, signed),
                {"layout": "packed", "bits": int(bits), "signed": bool(signed), "count": count, "shape": shape,
                 "kind": kind, **info})


def part_array(part: Part) -> torch.Tensor:
    """The tensor stored in a raw or packed part (packed codes come back as int64)."""
    info = part.info
    shape = tuple(info["shape"])
    if info["layout"] == "packed":
        codes = unpack_bits(part.data, info["bits"], info["count"], info["signed"])
        return torch.from_numpy(codes.reshape(shape))
    if info["layout"] != "raw":
        raise PackingError(f"part {part.name!r}: unknown layout {info['layout']!r}")
    if info["dtype"] == "bfloat16":
        bits16 = np.frombuffer(part.data, dtype="<i2").reshape(shape).copy()
        return torch.from_numpy(bits16).view(torch.bfloat16)
    array = np.frombuffer(part.data, dtype=np.dtype(info["dtype"]).newbyteorder("<")).reshape(shape)
    return torch.from_numpy(array.astype(np.dtype(info["dtype"])).copy())


def save_parts(path: str | Path, parts: list[Part], header: dict[str, Any] | None = None) -> int:
    """Write ``parts`` and the caller's ``header`` (JSON-able) to ``path``; return the file size."""
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        raise PackingError("part names must be unique")
    table = [{"name": p.name, "nbytes": p.nbytes, **p.info} for p in parts]
    head = zlib.compress(json.dumps({"meta": header or {}, "parts": table}, separators=(",", ":")).encode(), 9)
    path = Path(path)
    with path.open("wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<I", len(head)))
        f.write(head)
        for p in parts:
            f.write(p.data)
    return path.stat().st_size


def load_parts(path: str | Path) -> tuple[dict[str, Any], dict[str, Part]]:
    """Read a file written by :func:`save_parts`: (header, parts by name)."""
    blob = Path(path).read_bytes()
    if blob[:4] != MAGIC:
        raise PackingError(f"{path} is not a CompressBench container (bad magic {blob[:4]!r})")
    (head_len,) = struct.unpack("<I", blob[4:8])
    try:
        head = json.loads(zlib.decompress(blob[8 : 8 + head_len]).decode())
    except (zlib.error, ValueError) as err:
        raise PackingError(f"{path}: corrupt header ({err})") from None
    offset = 8 + head_len
    parts = {}
    for entry in head["parts"]:
        entry = dict(entry)
        name, nbytes = entry.pop("name"), entry.pop("nbytes")
        data = blob[offset : offset + nbytes]
        if len(data) != nbytes:
            raise PackingError(f"{path}: part {name!r} is truncated")
        parts[name] = Part(name, data, entry)
        offset += nbytes
    return head["meta"], parts


def part_sizes(path: str | Path) -> dict[str, int]:
    """Bytes of the file by part kind, plus ``header`` (magic, length and JSON) and ``total``."""
    _, parts = load_parts(path)
    sizes: dict[str, int] = {}
    for p in parts.values():
        kind = p.info.get("kind", "tensor")
        sizes[kind] = sizes.get(kind, 0) + p.nbytes
    total = Path(path).stat().st_size
    sizes["header"] = total - sum(p.nbytes for p in parts.values())
    sizes["total"] = total
    return sizes
