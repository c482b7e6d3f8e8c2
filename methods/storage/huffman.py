"""Canonical Huffman coding of integer streams (Deep Compression's last stage).

Han, Mao & Dally, "Deep Compression" (ICLR 2016), Sec. 4: after pruning and weight
sharing, the codebook indices and the relative indices of the sparse matrix are far from
uniformly distributed (their Fig. 5), so a Huffman code, variable length and prefix free,
stores them in fewer bits than fixed-length codes; the paper reports 20-30% saved.

Each stream is coded with a *canonical* Huffman code (Schwartz & Kallick 1964): the table
stored next to the bit stream is only the sorted list of present symbols and their code
lengths; codes are rebuilt from the lengths when decoding. Optimality of Huffman codes
makes a stream never longer than the fixed-length code of its alphabet; the table is the
only overhead. A stream of a single distinct symbol is coded in zero bits (its table says
which symbol and how many).
"""

from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass
from itertools import count

import numpy as np

#: Decoding uses a lookup table of 2**max_length entries up to this length, a bit loop beyond.
_TABLE_DECODE_MAX_LENGTH = 20


class HuffmanError(ValueError):
    """A Huffman stream or table is malformed."""


def code_lengths(symbols: np.ndarray) -> dict[int, int]:
    """Huffman code length of each distinct symbol of ``symbols`` (ties broken by insertion order)."""
    values, counts = np.unique(np.asarray(symbols).ravel(), return_counts=True)
    if len(values) == 0:
        return {}
    if len(values) == 1:
        return {int(values[0]): 0}
    tiebreak = count()
    heap = [(int(c), next(tiebreak), [int(v)]) for v, c in zip(values, counts, strict=True)]
    heapq.heapify(heap)
    lengths = {int(v): 0 for v in values}
    while len(heap) > 1:
        c1, _, group1 = heapq.heappop(heap)
        c2, _, group2 = heapq.heappop(heap)
        for v in group1 + group2:  # every symbol under the merged node gets one more bit
            lengths[v] += 1
        heapq.heappush(heap, (c1 + c2, next(tiebreak), group1 + group2))
    return lengths


def canonical_codes(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Canonical code (code value, length) of each symbol: sorted by (length, symbol)."""
    code = 0
    previous = 0
    codes: dict[int, tuple[int, int]] = {}
    for symbol, length in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= length - previous
        codes[symbol] = (code, length)
        code += 1
        previous = length
    return codes


@dataclass
class HuffmanStream:
    """A coded stream: its table (symbols and code lengths) and the packed bit stream."""

    n_symbols: int
    symbols: np.ndarray  # int64, sorted distinct symbols
    lengths: np.ndarray  # uint8, code length of each
    bits: bytes  # MSB-first packed code bits, zero-padded to a byte
    n_bits: int

    def table_bytes(self) -> bytes:
        """The table as stored: count, symbol width, n_symbols, then symbols and lengths."""
        width = _symbol_width(self.symbols)
        head = struct.pack("<IBQ", len(self.symbols), width, self.n_symbols)
        return head + self.symbols.astype(f"<i{width}").tobytes() + self.lengths.astype(np.uint8).tobytes()

    @classmethod
    def from_bytes(cls, table: bytes, bits: bytes) -> HuffmanStream:
        n_distinct, width, n_symbols = struct.unpack("<IBQ", table[:13])
        if width not in (1, 2, 4, 8):
            raise HuffmanError(f"bad symbol width {width} in a Huffman table")
        symbols = np.frombuffer(table, dtype=f"<i{width}", count=n_distinct, offset=13).astype(np.int64)
        lengths = np.frombuffer(table, dtype=np.uint8, count=n_distinct, offset=13 + width * n_distinct)
        return cls(n_symbols, symbols, lengths.copy(), bytes(bits), 8 * len(bits))

    @property
    def stored_bits(self) -> int:
        """Bits of the stored stream: table plus the byte-padded bit stream."""
        return 8 * (len(self.table_bytes()) + len(self.bits))


def _symbol_width(symbols: np.ndarray) -> int:
    if len(symbols) == 0:
        return 1
    lo, hi = int(symbols.min()), int(symbols.max())
    for width in (1, 2, 4):
        if -(1 << (8 * width - 1)) <= lo and hi < (1 << (8 * width - 1)):
            return width
    return 8


def huffman_encode(symbols: np.ndarray) -> HuffmanStream:
    """Code an integer array (flattened) with its own canonical Huffman code."""
    flat = np.asarray(symbols).ravel().astype(np.int64)
    lengths = code_lengths(flat)
    codes = canonical_codes(lengths)
    table_symbols = np.array(sorted(codes), dtype=np.int64)
    table_lengths = np.array([codes[s][1] for s in table_symbols], dtype=np.uint8)
    if len(flat) == 0 or int(table_lengths.max(initial=0)) == 0:
        return HuffmanStream(len(flat), table_symbols, table_lengths, b"", 0)
    slot = np.searchsorted(table_symbols, flat)
    code_values = np.array([codes[s][0] for s in table_symbols], dtype=np.int64)[slot]
    code_lengths_ = table_lengths.astype(np.int64)[slot]
    max_length = int(table_lengths.max())
    # bit j (MSB first) of each code, as a (n, max_length) matrix masked by each code's length
    shifts = code_lengths_[:, None] - 1 - np.arange(max_length)[None, :]
    valid = shifts >= 0
    bit_matrix = (code_values[:, None] >> np.where(valid, shifts, 0)) & 1
    bitstream = bit_matrix[valid].astype(np.uint8)  # row-major: codes in order, bits MSB first
    return HuffmanStream(len(flat), table_symbols, table_lengths, np.packbits(bitstream).tobytes(), int(bitstream.size))


def huffman_decode(stream: HuffmanStream) -> np.ndarray:
    """The int64 symbols of ``stream``, in order."""
    n = stream.n_symbols
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if len(stream.symbols) == 0:
        raise HuffmanError("a non-empty Huffman stream has an empty table")
    if int(stream.lengths.max()) == 0:
        return np.full(n, int(stream.symbols[0]), dtype=np.int64)
    codes = canonical_codes({int(s): int(n) for s, n in zip(stream.symbols, stream.lengths, strict=True)})
    max_length = int(stream.lengths.max())
    bits = np.unpackbits(np.frombuffer(stream.bits, dtype=np.uint8))
    if max_length <= _TABLE_DECODE_MAX_LENGTH:
        return _decode_with_table(bits, codes, max_length, n)
    return _decode_bitwise(bits, codes, n)


def _decode_with_table(bits: np.ndarray, codes: dict[int, tuple[int, int]], max_length: int, n: int) -> np.ndarray:
    # lookup: every max_length-bit window starting with a code maps to (symbol, length)
    table_symbol = np.zeros(1 << max_length, dtype=np.int64)
    table_length = np.zeros(1 << max_length, dtype=np.int64)
    for symbol, (code, length) in codes.items():
        start = code << (max_length - length)
        table_symbol[start : start + (1 << (max_length - length))] = symbol
        table_length[start : start + (1 << (max_length - length))] = length
    padded = np.concatenate([bits, np.zeros(max_length, dtype=np.uint8)]).astype(np.int64)
    windows = np.zeros(len(bits), dtype=np.int64)
    for j in range(max_length):  # the max_length-bit window starting at every bit position
        windows = (windows << 1) | padded[j : j + len(bits)]
    window_list = windows.tolist()
    symbol_list, length_list = table_symbol.tolist(), table_length.tolist()
    out = [0] * n
    position = 0
    for i in range(n):
        if position >= len(window_list):
            raise HuffmanError(f"Huffman stream ended after {i} of {n} symbols")
        w = window_list[position]
        length = length_list[w]
        if length == 0:
            raise HuffmanError(f"invalid Huffman code at bit {position}")
        out[i] = symbol_list[w]
        position += length
    return np.array(out, dtype=np.int64)


def _decode_bitwise(bits: np.ndarray, codes: dict[int, tuple[int, int]], n: int) -> np.ndarray:
    by_code = {(code, length): symbol for symbol, (code, length) in codes.items()}
    bit_list = bits.tolist()
    out = []
    code = length = 0
    for bit in bit_list:
        code, length = (code << 1) | bit, length + 1
        symbol = by_code.get((code, length))
        if symbol is not None:
            out.append(symbol)
            code = length = 0
            if len(out) == n:
                break
    if len(out) != n:
        raise HuffmanError(f"Huffman stream ended after {len(out)} of {n} symbols")
    return np.array(out, dtype=np.int64)


def fixed_length_bits(symbols: np.ndarray) -> int:
    """Bits of the same stream coded at a fixed length, ceil(log2(distinct symbols)) each."""
    flat = np.asarray(symbols).ravel()
    distinct = len(np.unique(flat))
    return len(flat) * (int(np.ceil(np.log2(distinct))) if distinct > 1 else 0)
