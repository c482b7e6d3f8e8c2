"""Sparse tensors: CSR or Deep Compression's relative index, whichever is smallest.

Unstructured sparsity only shrinks a model if the zeros are not stored. Per tensor the
smallest of the allowed formats is written (plain ``raw`` storage when sparsity is too low
to pay for the indices):

* ``csr`` (compressed sparse row) of the tensor viewed as [out_channels, rest]: row pointers
  and column indices, each packed at the narrowest bit width that holds its largest value,
  then the values;
* ``rel4`` / ``rel8``: relative indices of 4 or 8 bits with filler zeros
  (:func:`methods.storage.bits.relative_index`; Han, Mao & Dally, "Deep Compression",
  ICLR 2016, Sec. 3, Fig. 2; the paper uses 8 bits for conv and 5 for fc layers), then the
  values of the entries (a filler's value is a stored zero).

Values are stored at the tensor's own dtype (fp32 after pruning alone); integer buffers are
stored raw. Decoding is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from methods.storage.bits import absolute_positions, pack_bits, relative_index, unpack_bits
from methods.storage.codecs import dtype_name, dtype_of, raw_entry, tensor_bytes, tensor_from
from methods.storage.container import StorageError, TensorEntry, register_codec

FORMATS = ("dense", "csr", "rel4", "rel8")


def _width(max_value: int) -> int:
    """Bits of the narrowest unsigned integer holding ``max_value``."""
    return max(1, int(max_value).bit_length())


def _as_rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(1, 1) if tensor.dim() == 0 else tensor.reshape(tensor.shape[0], -1)


def _csr_entry(name: str, tensor: torch.Tensor) -> TensorEntry:
    rows = _as_rows(tensor)
    nonzero = rows != 0
    row_ptr = np.concatenate([[0], np.cumsum(nonzero.sum(dim=1).numpy().astype(np.int64))])
    cols = nonzero.nonzero()[:, 1].numpy()  # row-major order
    ptr_bits, col_bits = _width(int(row_ptr[-1])), _width(max(rows.shape[1] - 1, 0))
    entry = TensorEntry(name, "sparse", tuple(tensor.shape),
                        {"format": "csr", "dtype": dtype_name(tensor.dtype), "ptr_bits": ptr_bits, "col_bits": col_bits})
    entry.add("row_ptr", pack_bits(row_ptr, ptr_bits), "index")
    entry.add("cols", pack_bits(cols, col_bits), "index")
    entry.add("values", tensor_bytes(rows[nonzero]), "weights")
    return entry


def _relative_entry(name: str, tensor: torch.Tensor, index_bits: int) -> TensorEntry:
    flat = tensor.flatten()
    gaps, positions = relative_index((flat != 0).nonzero().flatten().numpy(), index_bits)
    values = flat[torch.from_numpy(positions)] if positions.size else flat[:0]  # fillers read a stored zero
    entry = TensorEntry(name, "sparse", tuple(tensor.shape),
                        {"format": f"rel{index_bits}", "dtype": dtype_name(tensor.dtype), "entries": int(gaps.size)})
    entry.add("index", pack_bits(gaps, index_bits), "index")
    entry.add("values", tensor_bytes(values), "weights")
    return entry


_ENCODERS = {
    "dense": lambda name, t: raw_entry(name, t, "weights"),
    "csr": _csr_entry,
    "rel4": lambda name, t: _relative_entry(name, t, 4),
    "rel8": lambda name, t: _relative_entry(name, t, 8),
}


def stored_format(entry: TensorEntry) -> str:
    """``dense``, ``csr``, ``rel4`` or ``rel8``: how a tensor written by :func:`sparse_entry` is stored."""
    return entry.fields["format"] if entry.codec == "sparse" else "dense"


def sparse_entry(name: str, tensor: torch.Tensor, formats: Sequence[str] = FORMATS) -> TensorEntry:
    """``tensor`` in whichever of ``formats`` takes the fewest bytes (integer tensors: raw)."""
    unknown = [f for f in formats if f not in _ENCODERS]
    if unknown or not formats:
        raise StorageError(f"unknown sparse format(s) {unknown}; choose from {FORMATS}")
    tensor = tensor.detach().cpu()
    if not tensor.is_floating_point():
        return raw_entry(name, tensor)  # integer buffers (BN step counters) are tiny and exact as they are
    candidates = [_ENCODERS[f](name, tensor) for f in formats]
    return min(candidates, key=lambda e: sum(len(data) for _kind, data in e.parts.values()))


@register_codec("sparse")
def _decode_sparse(entry: TensorEntry, decoded: Any) -> torch.Tensor:
    f = entry.fields
    dtype = dtype_of(f["dtype"])
    itemsize = torch.empty(0, dtype=dtype).element_size()
    out = torch.zeros(entry.numel, dtype=dtype)
    if f["format"] == "csr":
        rows = entry.shape[0] if entry.shape else 1
        row_ptr = unpack_bits(entry.data("row_ptr"), f["ptr_bits"], rows + 1)
        nnz = int(row_ptr[-1])
        cols = unpack_bits(entry.data("cols"), f["col_bits"], nnz)
        values = tensor_from(entry.data("values"), dtype, nnz)
        row_len = entry.numel // rows if rows else 0
        positions = np.repeat(np.arange(rows, dtype=np.int64), np.diff(row_ptr)) * row_len + cols
    else:
        count = f["entries"]
        positions = absolute_positions(unpack_bits(entry.data("index"), int(f["format"][3:]), count))
        values = tensor_from(entry.data("values")[:count * itemsize], dtype, count)
    if len(positions):
        out[torch.from_numpy(positions)] = values
    return out
