"""Codebook codecs: shared scalar values (k-means, Deep Compression) and product quantization.

* ``codebook`` (Gong et al. 2014, Sec. 3.1; Han, Mao & Dally, "Deep Compression", ICLR 2016,
  Sec. 3): a float32 codebook and one code per weight, the weight being ``codebook[code]``.
  With ``zero_code`` the code 0 means the exact value 0 (pruned weights) and is not in the
  stored codebook. ``layout: sparse`` (Deep Compression, Sec. 2, Fig. 2) gives codes only to
  the non-zero weights and stores their positions as relative indices with filler zeros.
  The integer streams (codes, indices) are bit-packed at their width (``coding: packed``)
  or Huffman-coded with their tables (``coding: huffman``, :mod:`methods.storage.huffman`).
* ``pq`` (Gong et al. 2014, Sec. 3.3): a weight matrix of ``m`` rows split into ``s``
  sub-spaces of ``d`` columns, one codebook of ``2**bits`` sub-vectors per sub-space and one
  packed code per (row, sub-space); with a ``stages`` field (residual quantization, Sec. 3.4)
  ``t`` such codebooks and codes whose sub-vectors add up.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from methods.storage.bits import absolute_positions, pack_bits, relative_index, unpack_bits
from methods.storage.container import StorageError, TensorEntry, register_codec
from methods.storage.huffman import HuffmanStream, huffman_decode, huffman_encode

LAYOUTS = ("dense", "sparse")
CODINGS = ("packed", "huffman")


def _floats(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype="<f4").copy())


def write_stream(entry: TensorEntry, role: str, values: np.ndarray, bits: int, coding: str, kind: str) -> None:
    """An integer stream (codes or relative indices) stored bit-packed at ``bits`` or Huffman-coded;
    a Huffman stream's table is the part ``role + "_table"`` of kind ``table``."""
    values = np.asarray(values, dtype=np.int64)
    entry.fields[f"n_{role}"] = int(values.size)
    if coding == "packed":
        entry.add(role, pack_bits(values, bits), kind)
    elif coding == "huffman":
        stream = huffman_encode(values)
        entry.add(role, stream.bits, kind)
        entry.add(f"{role}_table", stream.table_bytes(), "table")
    else:
        raise StorageError(f"coding must be one of {CODINGS}, got {coding!r}")


def read_stream(entry: TensorEntry, role: str, bits: int) -> np.ndarray:
    """Inverse of :func:`write_stream`."""
    if entry.fields["coding"] == "packed":
        return unpack_bits(entry.data(role), bits, entry.fields[f"n_{role}"])
    return huffman_decode(HuffmanStream.from_bytes(entry.data(f"{role}_table"), entry.data(role)))


def codebook_entry(name: str, shape: tuple[int, ...], centroids: torch.Tensor, codes: torch.Tensor, bits: int,
                   zero_code: bool, layout: str = "dense", coding: str = "packed",
                   index_bits: int | None = None) -> TensorEntry:
    """A weight as (codebook, codes). ``codes`` index ``[0, *centroids]`` when ``zero_code``, else
    ``centroids``; ``layout: sparse`` (only with ``zero_code``) adds ``index_bits``-bit relative indices."""
    if layout not in LAYOUTS:
        raise StorageError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not zero_code:  # no zeros, nothing to skip: a dense layer is stored densely
        layout = "dense"
    fields: dict[str, Any] = {"bits": int(bits), "zero_code": bool(zero_code), "layout": layout, "coding": coding}
    entry = TensorEntry(name, "codebook", tuple(shape), fields)
    entry.add("codebook", centroids.detach().float().numpy().astype("<f4").tobytes(), "codebook")
    flat = codes.reshape(-1).numpy()
    if layout == "sparse":
        if index_bits is None or not 1 <= index_bits <= 8:
            raise StorageError(f"index_bits must be in 1..8 for the sparse layout of {name}, got {index_bits!r}")
        gaps, positions = relative_index(np.flatnonzero(flat), index_bits)
        fields["index_bits"] = int(index_bits)
        write_stream(entry, "index", gaps, index_bits, coding, "index")
        flat = flat[positions]  # fillers sit on zeros: code 0
    write_stream(entry, "codes", flat, bits, coding, "weights")
    return entry


@register_codec("codebook")
def _decode_codebook(entry: TensorEntry, decoded: Any) -> torch.Tensor:
    f = entry.fields
    centroids = _floats(entry.data("codebook"))
    if f["zero_code"]:
        centroids = torch.cat([torch.zeros(1), centroids])
    values = centroids[torch.as_tensor(read_stream(entry, "codes", f["bits"]), dtype=torch.long)]
    if f["layout"] == "dense":
        return values
    gaps = read_stream(entry, "index", f["index_bits"])
    dense = torch.zeros(entry.numel)
    if len(gaps):
        dense[torch.from_numpy(absolute_positions(gaps))] = values
    return dense


def reconstruct(codebooks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The (m, s * d) matrix whose sub-vector (row r, sub-space i) is ``codebooks[i, codes[r, i]]``;
    with stages (residual quantization: codebooks (t, s, k, d), codes (m, t, s)) the sum over stages."""
    if codebooks.dim() == 4:
        return sum((reconstruct(codebooks[j], codes[:, j]) for j in range(codebooks.shape[0])),
                   torch.zeros(codes.shape[0], codebooks.shape[1] * codebooks.shape[3], dtype=codebooks.dtype))
    s = codebooks.shape[0]
    return codebooks[torch.arange(s)[None, :], codes].reshape(codes.shape[0], -1)


def pq_entry(name: str, shape: tuple[int, ...], codebooks: torch.Tensor, codes: torch.Tensor, bits: int) -> TensorEntry:
    """A product-quantized weight: ``codebooks`` (s, 2**bits, d) and ``codes`` (m, s); a residual-quantized
    one (Gong et al. 2014, Sec. 3.4): ``codebooks`` (t, s, 2**bits, d) and ``codes`` (m, t, s), ``t`` stages."""
    s, _k, d = codebooks.shape[-3:]
    fields = {"bits": int(bits), "subspaces": s, "subvector_length": d, "rows": int(codes.shape[0])}
    if codebooks.dim() == 4:
        fields["stages"] = int(codebooks.shape[0])
    entry = TensorEntry(name, "pq", tuple(shape), fields)
    entry.add("codebook", codebooks.detach().float().numpy().astype("<f4").tobytes(), "codebook")
    entry.add("codes", pack_bits(codes.reshape(-1), bits), "weights")
    return entry


@register_codec("pq")
def _decode_pq(entry: TensorEntry, decoded: Any) -> torch.Tensor:
    f = entry.fields
    s, k, d, m = f["subspaces"], 2 ** f["bits"], f["subvector_length"], f["rows"]
    stages = (f["stages"],) if "stages" in f else ()
    codebooks = _floats(entry.data("codebook")).reshape(*stages, s, k, d)
    codes = torch.from_numpy(unpack_bits(entry.data("codes"), f["bits"], m * s * math.prod(stages)))
    return reconstruct(codebooks, codes.reshape(m, *stages, s))
