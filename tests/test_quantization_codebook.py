"""Fixed point, k-means weight sharing, product quantization, Huffman coding, Deep Compression."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.context import make_context
from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.training import fit
from hardware.measured import LocalCPU
from methods.base import MethodConfigError
from methods.quantization.deep_compression import DeepCompression
from methods.quantization.fixed_point import DynamicFixedPoint, FixedPoint, to_fixed_point
from methods.quantization.huffman import HuffmanCoding
from methods.quantization.kmeans import (
    KMeansQuantization,
    SharedWeights,
    attach_shared,
    kmeans_1d,
    share_layer,
)
from methods.quantization.pq import ProductQuantization, product_quantize
from methods.storage import load_model, read_entries, read_state
from methods.storage.huffman import HuffmanStream, fixed_length_bits, huffman_decode, huffman_encode


# ------------------------------------------------------------------------------ a tiny task
class BlobData(L.LightningDataModule):
    """Ten Gaussian blobs drawn as 1x8x8 images: learnable in a few steps."""

    def __init__(self, n: int = 768, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(10, 64, generator=g) * 1.5
        labels = torch.arange(n) % 10
        images = centers[labels] + torch.randn(n, 64, generator=g)
        self.input_shape = (1, 8, 8)
        data = TensorDataset(images.reshape(n, 1, 8, 8), labels)
        self.train = torch.utils.data.Subset(data, range(0, n - 256))
        self.test = torch.utils.data.Subset(data, range(n - 256, n))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=256)


def _mlp(hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def blob_task(build: Callable[[], nn.Module], tmp_path_factory):
    """The blob data, its recipe and trainer, the model ``build`` makes trained on it (seed 0), and the tmp factory."""
    data = BlobData()
    recipe = RecipeConfig(epochs=2, lr=0.05, weight_decay=0.0)
    trainer = TrainerConfig(progress_bar=False, limit_val_batches=0)
    torch.manual_seed(0)
    return data, recipe, trainer, fit(build(), data, recipe, trainer, seed=0), tmp_path_factory


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return blob_task(_mlp, tmp_path_factory)


def _ctx(task, name: str):
    data, recipe, trainer, _model, factory = task
    return make_context(data, LocalCPU(), recipe, trainer, 0, factory.mktemp(name))


def _same_outputs(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(16, 1, 8, 8)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------ fixed point
def test_stochastic_rounding_is_unbiased() -> None:
    torch.manual_seed(0)
    x = (torch.rand(200) - 0.5) * 4
    draws = to_fixed_point(x.expand(4000, -1), 8, 3, "stochastic")  # 4000 independent draws of each value
    eps = 2.0**-3
    assert set(torch.unique((draws - x).abs() < eps).tolist()) == {True}  # one of the two neighbours
    # mean of 4000 draws: standard error <= eps / (2 sqrt(4000)) ~ 0.001; 5 sigma
    assert (draws.mean(0) - x).abs().max() < 5 * eps / (2 * math.sqrt(4000))
    # and it really is random: not the deterministic nearest value every time
    assert (draws.std(0) > 0).float().mean() > 0.9


@pytest.mark.parametrize("fraction_bits", [0, 4, 12])
def test_round_to_nearest_error_is_at_most_half_a_step(fraction_bits: int) -> None:
    word = 16
    limit = 2.0 ** (word - 1 - fraction_bits)
    x = (torch.rand(5000) * 2 - 1) * limit * 0.999
    err = (to_fixed_point(x, word, fraction_bits, "nearest") - x).abs()
    assert err.max() <= 2.0**-fraction_bits / 2 + 1e-6 * limit
    # saturation: values beyond the range land on its ends
    assert to_fixed_point(torch.tensor([1e9, -1e9]), word, fraction_bits, "nearest").tolist() == \
        [limit - 2.0**-fraction_bits, -limit]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"word_length": 0, "integer_bits": 0, "fraction_bits": 0}, "word_length"),
        ({"word_length": 33, "integer_bits": 21, "fraction_bits": 12}, "word_length"),
        ({"word_length": 16, "integer_bits": 3, "fraction_bits": 12}, "integer_bits + method.fraction_bits"),
        ({"rounding": "up"}, "rounding"),
    ],
)
def test_fixed_point_refuses_impossible_formats(kwargs, key) -> None:
    with pytest.raises(MethodConfigError, match=key.replace("+", r"\+")):
        FixedPoint(**kwargs)


def test_dynamic_fixed_point_refuses_bad_word_length_and_group() -> None:
    with pytest.raises(MethodConfigError, match=r"method\.word_length"):
        DynamicFixedPoint(word_length=33)
    with pytest.raises(MethodConfigError, match=r"method\.group"):
        DynamicFixedPoint(group="row")


def test_fixed_point_file_decodes_to_the_evaluated_model(task) -> None:
    model = task[3]
    result = FixedPoint(word_length=12, integer_bits=4, fraction_bits=8, rounding="nearest",
                        finetune={"epochs": 0.25}).compress(model, _ctx(task, "fxp"))
    again = load_model(result.stored_file, model)
    _same_outputs(result.model, again)
    weight = again[1].weight
    assert torch.equal(weight, torch.round(weight * 256) / 256)  # on the <4, 8> grid
    params = sum(p.numel() for p in model.parameters())
    assert result.metrics["size_weights_bytes"] == sum(math.ceil(p.numel() * 12 / 8) for p in model.parameters())
    assert result.metrics["size_weights_bytes"] < params * 4 * 12 / 32 + 8
    assert result.stored_bytes == result.metrics["size_total_bytes"]
    assert result.layer_bits == {"1": (12, 12), "3": (12, 12)}


def test_dynamic_fixed_point_per_channel_scales_are_stored(task) -> None:
    model = task[3]
    result = DynamicFixedPoint(word_length=6, group="channel", finetune={"epochs": 0}).compress(model, _ctx(task, "dfxp"))
    _same_outputs(result.model, load_model(result.stored_file, model))
    assert result.metrics["size_scale_bytes"] == 256 + 10  # one int8 FL per output channel
    ref = model(torch.zeros(1, 1, 8, 8))
    assert torch.isfinite(ref).all()


# ------------------------------------------------------------------------------ k-means sharing
def test_kmeans_1d_reaches_a_lloyd_fixed_point() -> None:
    values = torch.cat([torch.randn(500) * 0.1 - 1, torch.randn(500) * 0.1 + 1, torch.randn(200) * 0.05])
    centroids, codes = kmeans_1d(values, 3, "linear")
    means = torch.stack([values[codes == j].mean() for j in range(3)])
    torch.testing.assert_close(means, centroids, atol=1e-5, rtol=0)
    assert torch.allclose(centroids, torch.tensor([-1.0, 0.0, 1.0]), atol=0.05)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_with_2_to_the_b_clusters_keeps_at_most_2_to_the_b_values(task, init: str) -> None:
    model = task[3]
    result = KMeansQuantization(bits=3, bits_per_layer={"3": 2}, init=init, finetune={"epochs": 0.25}).compress(
        model, _ctx(task, f"km_{init}"))
    assert len(torch.unique(result.model[1].weight)) <= 8
    assert len(torch.unique(result.model[3].weight)) <= 4
    _same_outputs(result.model, load_model(result.stored_file, model))
    # codes are bit-packed at b bits: 64*256 weights at 3 bits, 256*10 at 2 bits
    assert result.metrics["size_weights_bytes"] == 64 * 256 * 3 // 8 + 256 * 10 * 2 // 8
    assert result.metrics["size_codebook_bytes"] == (8 + 4) * 4
    assert result.stored_bytes == result.metrics["size_total_bytes"]


def test_kmeans_refuses_impossible_bit_widths_and_too_many_clusters(task) -> None:
    for bits in (0, 33):
        with pytest.raises(MethodConfigError, match=r"method\.bits"):
            KMeansQuantization(bits=bits)
    with pytest.raises(MethodConfigError, match=r"method\.bits_per_layer\.2"):
        KMeansQuantization(bits_per_layer={"2": 9})
    with pytest.raises(MethodConfigError, match=r"method\.bits.*clusters.*only 6 weights"):
        share_layer("tiny.weight", torch.randn(2, 3), 3, "linear", 10, None)
    with pytest.raises(MethodConfigError, match="not layers of the model"):
        KMeansQuantization(bits_per_layer={"fc9": 4}, finetune={"epochs": 0}).compress(task[3], _ctx(task, "km_bad"))


def test_centroid_fine_tuning_moves_centroids_by_the_summed_cluster_gradient() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(20, 6)
    layer.weight.data[:, :5] = 0.0  # pruned connections: code 0 stays exactly zero
    shared = share_layer("weight", layer.weight, 3, "linear", 50, None)
    before = shared.centroids.clone()
    # reference: the same forward with an independent plain weight, its per-weight gradient
    plain = nn.Linear(20, 6)
    plain.weight.data = shared.weight().clone()
    plain.bias.data = layer.bias.data.clone()
    x, target = torch.randn(32, 20), torch.randn(32, 6)
    nn.functional.mse_loss(plain(x), target).backward()
    expected_grad = torch.zeros(len(shared.codebook)).index_add_(0, shared.codes, plain.weight.grad.flatten())[1:]

    attach_shared(layer, shared)
    assert isinstance(layer.parametrizations.weight[0], SharedWeights)
    lr = 0.1
    opt = torch.optim.SGD([layer.parametrizations.weight.original], lr=lr)
    nn.functional.mse_loss(layer(x), target).backward()
    opt.step()
    after = layer.parametrizations.weight.original.detach()
    torch.testing.assert_close(after - before, -lr * expected_grad, rtol=1e-5, atol=1e-7)
    assert (layer.weight[:, :5] == 0).all() and len(torch.unique(layer.weight)) <= 8


# ------------------------------------------------------------------------------ product quantization
def test_pq_reconstructs_and_uses_the_codebook_size_it_claims(task) -> None:
    g = torch.Generator().manual_seed(0)
    words = torch.randn(2, 4, 8, generator=g)  # 2 sub-spaces, 4 distinct sub-vectors each
    picks = torch.randint(0, 4, (40, 2), generator=g)
    weight = torch.cat([words[0, picks[:, 0]], words[1, picks[:, 1]]], dim=1)  # (40, 16)
    exact = product_quantize("w", weight, 2, 8, 50, g, "pq.bits")
    torch.testing.assert_close(exact.weight(), weight)  # k >= distinct sub-vectors: exact
    noisy = torch.randn(64, 32, generator=g)
    errors = [((product_quantize("w", noisy, b, 4, 20, g, "pq.bits").weight() - noisy) ** 2).mean() for b in (1, 3, 5)]
    assert errors[0] > errors[1] > errors[2] and errors[0] < noisy.var()

    model = task[3]
    result = ProductQuantization(bits=4, subvector_length=8, bits_per_layer={"3": 3}, subvector_length_per_layer={"3": 16},
                                 max_iterations=20, finetune={"epochs": 0.25}).compress(model, _ctx(task, "pq"))
    _header, entries = read_entries(result.stored_file)
    stored = {e.name: e for e in entries}
    # layer 1: 256 rows x 64 columns, d = 8: 8 sub-spaces of 16 codewords of 8 floats; 256 * 8 codes of 4 bits
    assert stored["1.weight"].nbytes("codebook") == 8 * 16 * 8 * 4 and stored["1.weight"].nbytes("codes") == 256 * 8 * 4 // 8
    # layer 3: 10 rows x 256 columns, d = 16: 16 sub-spaces of 8 codewords; 10 * 16 codes of 3 bits
    assert stored["3.weight"].nbytes("codebook") == 16 * 8 * 16 * 4 and stored["3.weight"].nbytes("codes") == 10 * 16 * 3 // 8
    _same_outputs(result.model, load_model(result.stored_file, model))
    with pytest.raises(MethodConfigError, match=r"method\.bits_per_layer\.3.*only 10 sub-vectors"):
        ProductQuantization(bits_per_layer={"3": 4}, subvector_length=8).compress(model, _ctx(task, "pq_bad"))
    with pytest.raises(MethodConfigError, match="subvector_length.*does not divide"):
        ProductQuantization(bits=2, subvector_length=7).compress(model, _ctx(task, "pq_bad2"))


# ------------------------------------------------------------------------------ Huffman
@pytest.mark.parametrize(
    "symbols",
    [
        np.random.default_rng(0).geometric(0.2, 20000) - 1,
        np.random.default_rng(1).integers(0, 32, 5000),
        np.random.default_rng(2).integers(-70000, 70000, 300),
        np.full(100, 7),
        np.array([3, -1]),
        np.zeros(0, dtype=np.int64),
    ],
    ids=["geometric", "uniform32", "wide", "single", "two", "empty"],
)
def test_huffman_round_trips_bit_exactly_and_beats_fixed_length(symbols: np.ndarray) -> None:
    stream = huffman_encode(symbols)
    stored = HuffmanStream.from_bytes(stream.table_bytes(), stream.bits)
    decoded = huffman_decode(stored)
    assert decoded.dtype == np.int64 and np.array_equal(decoded, symbols)
    assert stream.n_bits <= fixed_length_bits(symbols)  # the payload: never longer
    fixed_bytes = math.ceil(fixed_length_bits(symbols) / 8)
    assert len(stream.bits) <= fixed_bytes + len(stream.table_bytes())


def test_huffman_gains_on_skewed_codes_and_matches_entropy() -> None:
    rng = np.random.default_rng(0)
    probs = 0.5 ** np.arange(1, 17)
    symbols = rng.choice(16, size=20000, p=probs / probs.sum())
    stream = huffman_encode(symbols)
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    entropy_bits = -(p * np.log2(p)).sum() * len(symbols)
    assert entropy_bits <= stream.n_bits <= entropy_bits + len(symbols)  # Huffman's bound
    assert stream.n_bits < 0.6 * fixed_length_bits(symbols)


def test_huffman_method_stores_smaller_than_fixed_length(task) -> None:
    model = task[3]
    result = HuffmanCoding(bits=4, finetune={"epochs": 0}).compress(model, _ctx(task, "huff"))
    assert result.stored_bytes <= result.metrics["size_fixed_length_bytes"]
    assert result.metrics["size_table_bytes"] > 0
    packed = load_model(result.artifacts[0], model)
    _same_outputs(result.model, packed)  # Huffman coding is lossless


# ------------------------------------------------------------------------------ Deep Compression
def test_deep_compression_runs_every_stage_and_each_shrinks(task) -> None:
    model = task[3]
    method = DeepCompression(
        pruning={"sparsity": 0.9, "layer_sparsity": {"3": 0.6}, "iterations": 2, "finetune": {"epochs": 0.5}},
        sharing={"bits": 4, "finetune": {"epochs": 0.25, "lr": 1e-3}},
        index_bits=4,
    )
    result = method.compress(model, _ctx(task, "dc"))
    m = result.metrics
    assert m["size_dense_bytes"] > m["size_pruned_bytes"] > m["size_quantized_bytes"] > m["size_huffman_bytes"]
    assert result.stored_bytes == m["size_huffman_bytes"] == m["huffman/size_total_bytes"]
    assert m["huffman/size_table_bytes"] > 0 and m["quantized/size_index_bytes"] > 0
    weight = result.model[1].weight
    assert (weight == 0).float().mean() >= 0.89
    assert len(torch.unique(weight[weight != 0])) <= 15  # 2**4 codes, one of them the pruned zero
    tensors = read_state(result.stored_file).tensors
    torch.testing.assert_close(tensors["1.weight"], weight, rtol=0, atol=0)
    _same_outputs(result.model, load_model(result.stored_file, model))
    for stage in ("dense", "pruning", "quantization", "huffman"):
        assert f"{stage}/top1_val" in m
    assert result.layer_bits == {"1": (4, 32), "3": (4, 32)}


def test_deep_compression_validates_its_nested_keys() -> None:
    with pytest.raises(MethodConfigError, match=r"method\.sharing\.bits"):
        DeepCompression(sharing={"bits": 0})
    with pytest.raises(MethodConfigError, match=r"method\.index_bits"):
        DeepCompression(index_bits=33)
    with pytest.raises(MethodConfigError, match=r"method\.pruning\.sparsity_typo"):
        DeepCompression(pruning={"sparsity_typo": 0.5})
