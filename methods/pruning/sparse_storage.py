"""The stored size of sparse weights: CSR or Deep Compression's relative-index encoding.

Unstructured sparsity only shrinks a model if the zeros are not stored. Two formats are
written, and per tensor the smaller one (or plain dense storage, when sparsity is too low to
pay for the indices) is chosen:

* CSR (compressed sparse row) of the tensor viewed as [out_channels, rest]: row pointers,
  column indices and values, each index array in the narrowest unsigned width that fits.
* Relative index (Han, Mao, Dally, "Deep Compression", ICLR 2016, Sec. 3 and Fig. 2; cited
  in Berthelier et al. 2020, Sec. 2.4 and the Aswani survey, Sec. II.H): the positions of
  non-zero entries are stored as differences from the previous one in ``index_bits`` bits
  (4 or 8 here; the paper uses 8 for conv and 5 for fc layers). When a gap exceeds what the
  bits can say, a *filler zero* is inserted: an entry of value 0 at the furthest reachable
  position. A stored gap ``d`` means "skip d positions, then this entry" (d = 0: the next
  position), so b bits reach 2^b positions ahead.

``encode_sparse(tensor) -> bytes`` / ``decode_sparse(bytes) -> tensor`` round-trip exactly.
The quantization methods reuse :func:`relative_index` / :func:`absolute_positions` and
:func:`pack_bits` / :func:`unpack_bits` with codebook indices as the values (Deep Compression).
Departure: values are stored at the tensor's own dtype (fp32 after pruning alone); Deep
Compression's quantized values are the quantization methods' business.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

FORMATS = ("dense", "csr", "rel4", "rel8")
_FORMAT_CODE = {name: i for i, name in enumerate(FORMATS)}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool)
_DTYPE_CODE = {dt: i for i, dt in enumerate(_DTYPES)}
_FILE_MAGIC = b"CBSPARSE1"


# -- bit packing and relative indices (reused by Deep Compression) ---------------------------
def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers < 2**bits, ``bits`` each, little-endian bit order, into bytes."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in [1, 16], got {bits}")
    values = np.asarray(values, dtype=np.uint32)
    if values.size and int(values.max()) >= (1 << bits):
        raise ValueError(f"a value {int(values.max())} does not fit in {bits} bits")
    if bits == 8:
        return values.astype(np.uint8).tobytes()
    bit_matrix = ((values[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` integers of ``bits`` bits each."""
    if bits == 8:
        return np.frombuffer(data, dtype=np.uint8, count=count).astype(np.int64)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * bits]
    weights = (1 << np.arange(bits, dtype=np.int64))
    return (flat.reshape(count, bits).astype(np.int64) * weights).sum(axis=1)


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def relative_index(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaps of sorted non-zero ``positions`` in ``index_bits`` bits, with filler entries.

    Returns (gaps, entry_positions): one gap per stored entry and the absolute position of
    each entry; an entry whose position is not in ``positions`` is a filler (value 0).
    """
    span = 1 << index_bits  # a gap d in [0, span - 1] moves d + 1 positions ahead
    positions = np.asarray(positions, dtype=np.int64)
    skips = np.diff(positions, prepend=-1) - 1  # zeros between consecutive non-zeros
    if skips.size and int(skips.min()) < 0:
        raise ValueError("positions must be sorted and distinct")
    fillers = skips // span  # too far: filler zeros at the furthest reachable positions
    block_end = np.cumsum(fillers + 1) - 1
    gaps = np.full(int(block_end[-1]) + 1 if block_end.size else 0, span - 1, dtype=np.int64)
    gaps[block_end] = skips % span
    return gaps, absolute_positions(gaps)


def absolute_positions(gaps: np.ndarray) -> np.ndarray:
    """Positions of the entries described by relative-index ``gaps`` (fillers included)."""
    return np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1


# -- one tensor ------------------------------------------------------------------------------
def _header(fmt: str, tensor: torch.Tensor) -> bytes:
    return struct.pack(f"<BBB{tensor.dim()}I", _FORMAT_CODE[fmt], _DTYPE_CODE[tensor.dtype], tensor.dim(),
                       *tensor.shape)


def _values_bytes(values: torch.Tensor) -> bytes:
    if values.dtype == torch.bfloat16:
        return values.contiguous().view(torch.int16).numpy().tobytes()
    return values.contiguous().numpy().tobytes()


def _values_from(data: bytes, dtype: torch.dtype, count: int) -> torch.Tensor:
    if count == 0:
        return torch.zeros(0, dtype=dtype)
    if dtype == torch.bfloat16:
        return torch.frombuffer(bytearray(data), dtype=torch.int16, count=count).view(torch.bfloat16).clone()
    return torch.frombuffer(bytearray(data), dtype=dtype, count=count).clone()


def _unsigned_width(max_value: int) -> int:
    return 1 if max_value < 1 << 8 else 2 if max_value < 1 << 16 else 4


_WIDTH_DTYPE = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def _as_rows(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() == 0:
        return tensor.reshape(1, 1)
    return tensor.reshape(tensor.shape[0], -1)


def _encode_dense(tensor: torch.Tensor) -> bytes:
    return _header("dense", tensor) + _values_bytes(tensor.flatten())


def _encode_csr(tensor: torch.Tensor) -> bytes:
    rows = _as_rows(tensor)
    nonzero = rows != 0
    counts = nonzero.sum(dim=1).numpy().astype(np.int64)
    row_ptr = np.concatenate([[0], np.cumsum(counts)])
    cols = nonzero.nonzero()[:, 1].numpy()  # row-major order
    values = rows[nonzero]
    ptr_width = _unsigned_width(int(row_ptr[-1]))
    col_width = _unsigned_width(max(rows.shape[1] - 1, 0))
    return b"".join([
        _header("csr", tensor),
        struct.pack("<IBB", int(row_ptr[-1]), ptr_width, col_width),
        row_ptr.astype(_WIDTH_DTYPE[ptr_width]).tobytes(),
        cols.astype(_WIDTH_DTYPE[col_width]).tobytes(),
        _values_bytes(values),
    ])


def _encode_relative(tensor: torch.Tensor, index_bits: int) -> bytes:
    flat = tensor.flatten()
    positions = (flat != 0).nonzero().flatten().numpy()
    gaps, entries = relative_index(positions, index_bits)
    values = flat[torch.from_numpy(entries)] if entries.size else flat[:0]  # fillers read a stored zero
    return b"".join([
        _header(f"rel{index_bits}", tensor),
        struct.pack("<I", int(gaps.size)),
        pack_bits(gaps, index_bits),
        _values_bytes(values),
    ])


_ENCODERS = {
    "dense": _encode_dense,
    "csr": _encode_csr,
    "rel4": lambda t: _encode_relative(t, 4),
    "rel8": lambda t: _encode_relative(t, 8),
}


def encode_sparse(tensor: torch.Tensor, formats: Sequence[str] = FORMATS) -> bytes:
    """Encode ``tensor`` in whichever of ``formats`` is smallest (self-describing bytes)."""
    unknown = [f for f in formats if f not in _ENCODERS]
    if unknown or not formats:
        raise ValueError(f"unknown sparse format(s) {unknown}; choose from {FORMATS}")
    tensor = tensor.detach().cpu()
    if tensor.dtype not in _DTYPE_CODE:
        raise ValueError(f"cannot store dtype {tensor.dtype}")
    if not tensor.is_floating_point() or tensor.dtype == torch.bool:
        formats = ["dense"]  # integer buffers (BN step counters) are tiny and exact as they are
    encoded = [_ENCODERS[f](tensor) for f in formats]
    return min(encoded, key=len)


def format_of(data: bytes) -> str:
    return FORMATS[data[0]]


def decode_sparse(data: bytes) -> torch.Tensor:
    """Decode bytes written by :func:`encode_sparse` back into the exact tensor."""
    fmt_code, dtype_code, ndim = struct.unpack_from("<BBB", data, 0)
    shape = struct.unpack_from(f"<{ndim}I", data, 3)
    offset = 3 + 4 * ndim
    fmt, dtype = FORMATS[fmt_code], _DTYPES[dtype_code]
    numel = int(np.prod(shape)) if ndim else 1
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if fmt == "dense":
        return _values_from(data[offset:], dtype, numel).reshape(shape)
    out = torch.zeros(numel, dtype=dtype)
    if fmt == "csr":
        nnz, ptr_width, col_width = struct.unpack_from("<IBB", data, offset)
        offset += 6
        rows = shape[0] if ndim else 1
        row_ptr = np.frombuffer(data, dtype=_WIDTH_DTYPE[ptr_width], count=rows + 1, offset=offset).astype(np.int64)
        offset += (rows + 1) * ptr_width
        cols = np.frombuffer(data, dtype=_WIDTH_DTYPE[col_width], count=nnz, offset=offset).astype(np.int64)
        offset += nnz * col_width
        values = _values_from(data[offset:offset + nnz * itemsize], dtype, nnz)
        row_len = numel // rows if rows else 0
        row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(row_ptr))
        out[torch.from_numpy(row_of * row_len + cols)] = values
        return out.reshape(shape)
    bits = int(fmt[3:])
    (count,) = struct.unpack_from("<I", data, offset)
    offset += 4
    nbytes = packed_size(count, bits)
    gaps = unpack_bits(data[offset:offset + nbytes], bits, count)
    offset += nbytes
    values = _values_from(data[offset:offset + count * itemsize], dtype, count)
    if count:
        out[torch.from_numpy(absolute_positions(gaps))] = values
    return out.reshape(shape)


# -- a whole state dict in one file ------------------------------------------------------------
def save_sparse_state_dict(state_dict: Mapping[str, torch.Tensor], path: Path,
                           formats: Sequence[str] = FORMATS) -> dict[str, dict[str, int | str]]:
    """Write every tensor in its smallest format to ``path``; return per-tensor format and bytes."""
    buffer = io.BytesIO()
    buffer.write(_FILE_MAGIC)
    buffer.write(struct.pack("<I", len(state_dict)))
    report: dict[str, dict[str, int | str]] = {}
    for name, tensor in state_dict.items():
        blob = encode_sparse(tensor, formats)
        key = name.encode("utf-8")
        buffer.write(struct.pack("<HI", len(key), len(blob)))
        buffer.write(key)
        buffer.write(blob)
        report[name] = {"format": format_of(blob), "bytes": len(blob), "dense_bytes": tensor.numel() * tensor.element_size()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return report


def load_sparse_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Decode a file written by :func:`save_sparse_state_dict`."""
    data = Path(path).read_bytes()
    if not data.startswith(_FILE_MAGIC):
        raise ValueError(f"{path} is not a sparse state-dict file (written by save_sparse_state_dict)")
    offset = len(_FILE_MAGIC)
    (count,) = struct.unpack_from("<I", data, offset)
    offset += 4
    state: dict[str, torch.Tensor] = {}
    for _ in range(count):
        key_len, blob_len = struct.unpack_from("<HI", data, offset)
        offset += 6
        name = data[offset:offset + key_len].decode("utf-8")
        offset += key_len
        state[name] = decode_sparse(data[offset:offset + blob_len])
        offset += blob_len
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} trailing bytes; the file is corrupt")
    return state
