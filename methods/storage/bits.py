"""Integers stored at exactly their bit width, and Deep Compression's relative sparse index.

Storage size must be the size of the file a method really writes (docs/ARCHITECTURE.md, Contracts), so ``b``-bit
integers take ``b`` bits each, not a byte or a word: ``count`` values take
``ceil(count * b / 8)`` bytes for any ``b`` in 1..32. Layout: the ``b // 8`` whole low-order
bytes of every value first (one column of bytes after the other), then the remaining
``b % 8`` high bits of every value bit-packed, value ``i`` on bits ``i*r .. i*r + r - 1``,
least significant bit first. Signed values are stored as their ``b``-bit two's complement
and sign-extended when read.

The relative index (Han, Mao & Dally, "Deep Compression", ICLR 2016, Sec. 3 and Fig. 2) is
how sparse positions are stored by both the pruning family's sparse tensors and the
quantization family's shared weights: the gap to the previous non-zero in ``index_bits``
bits, with a *filler zero* entry inserted where a gap exceeds what the bits can say. A
stored gap ``d`` means "skip d positions, then this entry", so b bits reach 2^b positions.
"""

from __future__ import annotations

import numpy as np
import torch


class BitsError(ValueError):
    """Values that do not fit their bit width, or a truncated stream."""


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 32:
        raise BitsError(f"bits must be an integer in 1..32, got {bits!r}")


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes taken by ``count`` values of ``bits`` bits."""
    _check_bits(bits)
    return (count * bits + 7) // 8


def _as_int64(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.size and values.dtype.kind not in "iub":
        raise BitsError(f"only integers can be bit-packed, got dtype {values.dtype}")
    return values.astype(np.int64).reshape(-1)


def pack_bits(values: np.ndarray | torch.Tensor, bits: int, signed: bool = False) -> bytes:
    """Pack integers into ``ceil(count * bits / 8)`` bytes.

    Unsigned values must lie in ``[0, 2**bits)``, signed ones in ``[-2**(bits-1), 2**(bits-1))``.
    """
    _check_bits(bits)
    flat = _as_int64(values)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if flat.size and (flat.min() < lo or flat.max() > hi):
        kind = "signed" if signed else "unsigned"
        raise BitsError(f"values in [{flat.min()}, {flat.max()}] do not fit {bits}-bit {kind} integers [{lo}, {hi}]")
    unsigned = flat & ((1 << bits) - 1)  # two's complement low bits for signed values
    whole, rest = divmod(bits, 8)
    data = b"".join(((unsigned >> (8 * i)) & 0xFF).astype(np.uint8).tobytes() for i in range(whole))
    if rest:
        high = (unsigned >> (8 * whole)).astype(np.uint8)
        bit_matrix = np.unpackbits(high[:, None], axis=1, bitorder="little")[:, :rest]
        data += np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()
    return data


def unpack_bits(data: bytes, bits: int, count: int, signed: bool = False) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values as int64."""
    _check_bits(bits)
    need = packed_nbytes(count, bits)
    if len(data) < need:
        raise BitsError(f"{count} values of {bits} bits need {need} bytes, got {len(data)}")
    whole, rest = divmod(bits, 8)
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    values = np.zeros(count, dtype=np.int64)
    for i in range(whole):
        values |= raw[i * count:(i + 1) * count].astype(np.int64) << (8 * i)
    if rest:
        stream = np.unpackbits(raw[whole * count:], bitorder="little")[: count * rest].reshape(count, rest)
        values |= (stream.astype(np.int64) << np.arange(rest, dtype=np.int64)).sum(axis=1) << (8 * whole)
    if signed:
        values = np.where(values >= (1 << (bits - 1)), values - (1 << bits), values)
    return values


def relative_index(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaps of sorted non-zero ``positions`` in ``index_bits`` bits, with filler entries.

    Returns (gaps, entry_positions): one gap per stored entry and the absolute position of
    each entry; an entry whose position is not in ``positions`` is a filler (value 0).
    """
    span = 1 << index_bits  # a gap d in [0, span - 1] moves d + 1 positions ahead
    positions = np.asarray(positions, dtype=np.int64)
    skips = np.diff(positions, prepend=-1) - 1  # zeros between consecutive non-zeros
    if skips.size and int(skips.min()) < 0:
        raise BitsError("positions must be sorted and distinct")
    fillers = skips // span  # too far: filler zeros at the furthest reachable positions
    block_end = np.cumsum(fillers + 1) - 1
    gaps = np.full(int(block_end[-1]) + 1 if block_end.size else 0, span - 1, dtype=np.int64)
    gaps[block_end] = skips % span
    return gaps, absolute_positions(gaps)


def absolute_positions(gaps: np.ndarray) -> np.ndarray:
    """Positions of the entries described by relative-index ``gaps`` (fillers included)."""
    return np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1
