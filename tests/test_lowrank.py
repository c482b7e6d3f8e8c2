"""Low-rank (SVD, Tucker-2, CP) and tensor-train methods (issue 16): exact decompositions at the true rank,
the TT-matrix product, stored files that round-trip, and impossible requests refused naming the key."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from methods import create_method
from methods.base import MethodConfigError
from methods.lowrank.decompose import DECOMPOSITIONS
from methods.lowrank.ranks import energy_rank, vbmf_rank
from methods.lowrank.ttmatrix import TTLinear, bond_ranks, random_cores, tt_svd
from methods.storage import load_model, read_entries
from tests.test_pruning_classic import SmallConvNet, context

torch.set_num_threads(1)
G = torch.Generator().manual_seed(0)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_svd_of_a_rank_r_linear_layer_is_exact_at_r() -> None:
    layer = nn.Linear(40, 30).double()
    layer.weight.data = _randn(30, 5) @ _randn(5, 40)
    factored = DECOMPOSITIONS["svd"](layer, (5,)).double()
    x = _randn(7, 40)
    assert _relative(factored(x), layer(x)) < 1e-6
    assert _relative(DECOMPOSITIONS["svd"](layer, (4,)).double()(x), layer(x)) > 1e-3  # below the rank it is not


def test_tucker2_of_a_multilinear_rank_tensor_is_exact_at_its_ranks() -> None:
    core = _randn(6, 4, 3, 3)
    kernel = torch.einsum("oihw,Oo,Ii->OIhw", core, _randn(12, 6), _randn(10, 4))
    conv = nn.Conv2d(10, 12, 3, stride=2, padding=1).double()
    conv.weight.data = kernel
    factored = DECOMPOSITIONS["tucker2"](conv, (6, 4)).double()
    x = _randn(2, 10, 9, 9)
    assert _relative(factored(x), conv(x)) < 1e-6
    assert [m.kernel_size for m in factored] == [(1, 1), (3, 3), (1, 1)]


def test_cp_of_a_rank_r_kernel_is_exact_at_r() -> None:
    kernel = torch.einsum("or,ir,hr,wr->oihw", _randn(8, 3), _randn(6, 3), _randn(3, 3), _randn(3, 3))
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=False).double()
    conv.weight.data = kernel
    factored = DECOMPOSITIONS["cp"](conv, (3,), iterations=500).double()
    x = _randn(2, 6, 7, 7)
    assert _relative(factored(x), conv(x)) < 1e-4
    assert [m.groups for m in factored] == [1, 3, 3, 1]


def test_rank_rules_find_the_rank_of_a_noisy_low_rank_matrix() -> None:
    matrix = (_randn(64, 7) @ _randn(7, 144) + 0.05 * _randn(64, 144)).float()
    assert vbmf_rank(matrix) == 7
    assert vbmf_rank(_randn(64, 144).float()) == 1  # pure noise: VBMF keeps nothing (at least one component)
    assert energy_rank(matrix, 0.999) == 7
    assert energy_rank(matrix, 0.5) < 7


def test_tt_matrix_times_vector_equals_the_dense_product() -> None:
    layer = TTLinear([2, 3, 4], [3, 2, 5], bond_ranks([2, 3, 4], [3, 2, 5], [3, 2]))
    random_cores(layer, torch.Generator().manual_seed(1))
    layer.bias.data = torch.randn(30)  # type: ignore[union-attr]
    dense = layer.weight()
    assert dense.shape == (30, 24)
    x = torch.randn(5, 24)
    assert torch.allclose(layer(x), x @ dense.T.float() + layer.bias, atol=1e-5)
    # TT-SVD of a matrix holding that TT-matrix gets it back at the same ranks
    other = TTLinear([2, 3, 4], [3, 2, 5], layer.ranks)
    tt_svd(other, dense)
    assert _relative(other.weight(), dense) < 1e-5


@pytest.mark.parametrize("conv", ["tucker2", "cp"])
def test_lowrank_stored_file_round_trips(tmp_path, conv) -> None:
    model = SmallConvNet().eval()
    method = create_method("lowrank", conv_decomposition=conv, ranks={"conv2": [4, 3] if conv == "tucker2" else [5],
                                                                     "fc": [2]},
                           finetune={"epochs": 0.5}, layers={"first": True})
    result = method.compress(model, context(tmp_path))
    header, _ = read_entries(result.stored_file)
    assert header["architecture"] == "factorized"
    assert header["meta"]["layers"]["fc"] == {"kind": "svd", "ranks": [2]}
    assert isinstance(result.model.conv2, nn.Sequential) and isinstance(result.model.fc, nn.Sequential)
    assert result.metrics["macs_ratio"] < 1
    again = load_model(result.stored_file, model)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(again(x), result.model(x))
    assert not isinstance(model.conv2, nn.Sequential)  # the baseline is untouched


def test_tensor_train_stored_file_holds_the_cores_and_round_trips(tmp_path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 10)).eval()
    method = create_method("tensor_train", shapes={"1": {"in_modes": [4, 3, 4], "out_modes": [2, 3, 4], "ranks": [2, 3]}},
                           finetune={"epochs": 0.5})
    result = method.compress(model, context(tmp_path, shape=(3, 4, 4)))
    header, entries = read_entries(result.stored_file)
    assert header["meta"]["layers"]["1"]["ranks"] == [1, 2, 3, 1]
    shapes = {e.name: e.shape for e in entries}
    assert shapes["1.cores.0"] == (1, 2, 4, 2) and shapes["1.cores.2"] == (3, 4, 4, 1) and "1.weight" not in shapes
    assert result.metrics["layer_compression_factor"] == pytest.approx(48 * 24 / (16 + 54 + 48))
    again = load_model(result.stored_file, model)
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(again(x), result.model(x))


@pytest.mark.parametrize(("method", "options", "message"), [
    ("lowrank", {"ranks": {"conv2": [0, 3]}}, "method.ranks.conv2[0] must be >= 1"),
    ("lowrank", {"ranks": {"conv2": [17, 3]}}, "method.ranks.conv2=[17, 3] exceeds the full rank [16, 8]"),
    ("lowrank", {"ranks": {"conv2": [4]}}, "method.ranks.conv2=[4]: a tucker2 layer takes [out_rank, in_rank]"),
    ("lowrank", {"ranks": {"fc": [11]}}, "method.ranks.fc=[11] exceeds the full rank [10]"),
    ("lowrank", {"ranks": {"bn1": [2]}}, "method.ranks names ['bn1']"),
    ("tensor_train", {"rank": 0}, "method.rank must be >= 1"),
    ("tensor_train", {"shapes": {"fc": {"in_modes": [4, 5], "out_modes": [2, 5]}}, "layers": {"last": True}},
     "method.shapes.fc.in_modes=[4, 5] multiplies to 20, but fc has 16 in_features"),
    ("tensor_train", {"shapes": {"fc": {"in_modes": [4, 4], "out_modes": [2, 5], "ranks": [9]}}, "layers": {"last": True}},
     "method.shapes.fc.ranks: TT-ranks [9] of fc exceed the full TT-ranks [8]"),
])
def test_impossible_requests_name_the_key(tmp_path, method, options, message) -> None:
    with pytest.raises(MethodConfigError) as error:
        create_method(method, finetune={"epochs": 0}, **options).compress(SmallConvNet().eval(), context(tmp_path))
    assert message in str(error.value)
