"""The storage container, its codecs and the one load function (methods.storage)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from methods.storage import StorageError, TensorEntry, load_model, part_sizes, read_entries, read_state, save_model
from methods.storage.bits import BitsError, absolute_positions, pack_bits, packed_nbytes, relative_index, unpack_bits
from methods.storage.codebook import codebook_entry, pq_entry, reconstruct
from methods.storage.codecs import (
    affine_entry,
    fill_entry,
    fixed_point_entry,
    packed_entry,
    raw_entry,
    state_entries,
)
from methods.storage.sparse import FORMATS, sparse_entry, stored_format


def _parts_bytes(entry: TensorEntry) -> int:
    return sum(len(data) for _kind, data in entry.parts.values())


def _round_trip(tmp_path, entries: list[TensorEntry]) -> dict[str, torch.Tensor]:
    save_model(tmp_path / "m.cbs", entries)
    return read_state(tmp_path / "m.cbs").tensors


# -- bits ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [*range(1, 17), 24, 31, 32])
@pytest.mark.parametrize("signed", [False, True])
def test_packing_round_trips_for_every_bit_width(bits: int, signed: bool) -> None:
    rng = np.random.default_rng(bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
    for count in (1, 7, 8, 9, 1001):
        values = rng.integers(lo, hi, size=count, dtype=np.int64)
        values[0], values[-1] = lo, hi - 1  # the extremes are always there
        data = pack_bits(values, bits, signed)
        assert len(data) == packed_nbytes(count, bits) == -(-count * bits // 8)
        assert np.array_equal(unpack_bits(data, bits, count, signed), values)


def test_packing_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(BitsError, match="do not fit 3-bit unsigned"):
        pack_bits(np.array([0, 8]), 3)
    with pytest.raises(BitsError, match="do not fit 4-bit signed"):
        pack_bits(np.array([-9]), 4, signed=True)
    with pytest.raises(BitsError, match="bits must be an integer in 1..32"):
        pack_bits(np.array([0]), 33)
    with pytest.raises(BitsError, match="only integers"):
        pack_bits(np.array([0.5]), 4)


def test_relative_index_inserts_filler_zeros_when_a_gap_exceeds_the_bits() -> None:
    gaps, entries = relative_index(np.array([0, 3, 40]), index_bits=4)  # 4 bits reach 16 positions ahead
    # 0: gap 0; 3: skip 2; 40: 36 zeros to skip -> fillers at 19 and 35, then skip 4
    assert gaps.tolist() == [0, 2, 15, 15, 4]
    assert entries.tolist() == [0, 3, 19, 35, 40]
    assert absolute_positions(gaps).tolist() == entries.tolist()


# -- the container ---------------------------------------------------------------------------------
def test_container_round_trips_every_codec_and_accounts_for_every_byte(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-8, 8, (4, 3, 3, 3), generator=g)
    scale = torch.rand(4, generator=g)
    half = torch.randn(5, generator=g).to(torch.bfloat16)
    entries = [
        raw_entry("w.scale", scale, "scales"),
        fill_entry("w.zero_point", (4,), 0, torch.int32),
        affine_entry("w", codes, 4, True, "w.scale", "w.zero_point", 0),
        raw_entry("h", half, "weights16"),
        raw_entry("steps", torch.tensor(7)),
        packed_entry("zp", torch.tensor([3, 0, 15]), 4, False, "zero_points"),
        fixed_point_entry("fx", torch.tensor([[-3, 2], [1, 0]]), 6, torch.tensor([2, 4]), 0),
    ]
    sizes = save_model(tmp_path / "m.cbs", entries, {"model": "tiny"})
    state = read_state(tmp_path / "m.cbs")
    assert state.meta == {"model": "tiny"} and state.architecture == "template"
    t = state.tensors
    assert torch.equal(t["w"], codes.float() * scale.reshape(4, 1, 1, 1))
    assert torch.equal(t["w.zero_point"], torch.zeros(4, dtype=torch.int32))
    assert torch.equal(t["h"], half) and t["steps"].dtype == torch.int64 and int(t["steps"]) == 7
    assert t["zp"].tolist() == [3, 0, 15]
    assert t["fx"].tolist() == [[-0.75, 0.5], [1 / 16, 0.0]]
    assert sizes["weights"] == 54 + 3 and sizes["scales"] == 16 and sizes["weights16"] == 10 and sizes["scale"] == 2
    assert sizes == part_sizes(tmp_path / "m.cbs")
    assert sizes["total"] == (tmp_path / "m.cbs").stat().st_size == sum(v for k, v in sizes.items() if k != "total")


def test_corrupt_files_and_unknown_codecs_are_refused(tmp_path) -> None:
    path = tmp_path / "m.cbs"
    save_model(path, [raw_entry("a", torch.ones(3))])
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(StorageError, match="trailing bytes"):
        read_state(path)
    save_model(path, [TensorEntry("a", "no_such_codec", (1,))])
    with pytest.raises(StorageError, match="codec 'no_such_codec'"):
        read_state(path)
    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(StorageError, match="not a CompressBench model file"):
        read_entries(tmp_path / "x.pt")
    with pytest.raises(StorageError, match="architecture 'nope' is not registered"):
        save_model(path, [], architecture="nope")


def test_load_model_rebuilds_on_the_template_and_names_mismatches(tmp_path) -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    path = tmp_path / "m.cbs"
    save_model(path, state_entries(net.state_dict(), {}))
    loaded = load_model(path, nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values(), strict=True))
    with pytest.raises(StorageError, match=r"missing \['2.bias', '2.weight'\]"):
        load_model(path, nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)))


# -- sparse -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.999, 1.0])
def test_sparse_encoding_round_trips_exactly_and_picks_the_smallest(sparsity: float, tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 16, 3, 3, generator=g)
    w[torch.rand(w.shape, generator=g) < sparsity] = 0.0
    sizes = {}
    for fmt in FORMATS:
        entry = sparse_entry("w", w, [fmt])
        assert torch.equal(_round_trip(tmp_path, [entry])["w"], w), fmt
        sizes[fmt] = _parts_bytes(entry)
    best = sparse_entry("w", w)
    assert _parts_bytes(best) == min(sizes.values()) and stored_format(best) == min(sizes, key=sizes.get)
    if sparsity >= 0.9:
        assert _parts_bytes(best) < w.numel() * 4 / 4  # really smaller than the dense fp32 tensor


def test_sparse_integer_and_scalar_tensors_round_trip(tmp_path) -> None:
    tensors = {"steps": torch.tensor(12), "s": torch.tensor(0.0), "v": torch.tensor([0.0, 0.0, 2.5])}
    decoded = _round_trip(tmp_path, [sparse_entry(k, v) for k, v in tensors.items()])
    assert all(torch.equal(decoded[k], v) for k, v in tensors.items())


# -- codebooks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout,coding", [("dense", "packed"), ("sparse", "packed"), ("sparse", "huffman")])
def test_codebook_entries_decode_to_codebook_of_codes(layout: str, coding: str, tmp_path) -> None:
    g = torch.Generator().manual_seed(2)
    centroids = torch.tensor([-0.5, 0.25, 1.0])
    codes = torch.randint(0, 4, (20, 10), generator=g) * (torch.rand(20, 10, generator=g) < 0.3)  # mostly code 0
    entry = codebook_entry("w", (20, 10), centroids, codes, 2, True, layout, coding, index_bits=3)
    expected = torch.cat([torch.zeros(1), centroids])[codes]
    assert torch.equal(_round_trip(tmp_path, [entry])["w"], expected)


def test_pq_entry_decodes_to_the_reconstructed_matrix(tmp_path) -> None:
    g = torch.Generator().manual_seed(3)
    codebooks, codes = torch.randn(2, 4, 3, generator=g), torch.randint(0, 4, (5, 2), generator=g)
    decoded = _round_trip(tmp_path, [pq_entry("w", (5, 6), codebooks, codes, 2)])["w"]
    assert torch.equal(decoded, reconstruct(codebooks, codes))
    assert torch.equal(decoded[1, 3:], codebooks[1, codes[1, 1]])


def test_state_entries_keep_what_is_not_encoded_raw(tmp_path) -> None:
    net = nn.Linear(3, 2)
    encoded = {"weight": sparse_entry("weight", torch.zeros(2, 3))}
    entries = state_entries(net.state_dict(), encoded)
    assert [e.codec for e in entries] == ["sparse", "raw"]
    save_model(tmp_path / "m.cbs", entries)
    loaded = load_model(tmp_path / "m.cbs", copy.deepcopy(net))
    assert torch.equal(loaded.weight, torch.zeros(2, 3)) and torch.equal(loaded.bias, net.bias)
