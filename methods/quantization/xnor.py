"""XNOR-Net: binary weights and binary inputs, each with its scaling factor; first and last layers in float.

Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks"
(ECCV 2016), Sec. 3.2 (summarised by Berthelier et al. 2020, Sec. 2.5): a convolution ``I * W`` is
approximated by ``(sign(I) (*) sign(W)) . K alpha`` (their Eq. 11), where

* ``alpha`` is each output filter's mean absolute weight (the ``bwn`` quantizer, :mod:`.bwn`);
* ``K = A * k``: ``A`` the mean of ``|I|`` across the input channels, ``k`` a ``w x h`` box filter
  of the kernel's size (``1 / (w h)``), applied with the convolution's stride and padding, so each
  output position is scaled by the mean magnitude of the input window it read (for a fully
  connected layer, the mean ``|I|`` of each input row). ``act_scaling: false`` drops ``K``.
* ``sign(I)`` is the ``sign`` activation quantizer (1 bit, registered in :mod:`.quantizers`): its
  gradient is the clipped straight-through estimator (``|I| <= 1``), as for the weights.

The first and last layers stay in float as in the paper (``layers.first`` / ``layers.last``,
false by default; set them true to binarize those too). The file stores one bit per weight and
one float32 ``alpha`` per output channel (codec ``sign``); the model decoded from it (architecture
``xnor``) binarizes the inputs of the same layers at run time.

Departures: the paper reorders each block to BatchNorm -> BinActiv -> BinConv -> Pool so that
the binarized inputs are centred; here the model's block order is kept (on a layer that follows
a ReLU, ``sign`` then marks the active units); training starts from the run's trained baseline;
the reference code's centring and clamping of the weights before binarization are not done (the
paper has neither).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import Layer, LayerSelection, option
from methods.quantization.binary import BinaryConfig, sign_ste, store_quantized, train_quantized, weight_quantizer
from methods.quantization.fakequant import conv2d_like
from methods.quantization.quantizers import create_quantizer, register_quantizer
from methods.quantization.uniform import QuantScheme
from methods.storage import StoredState, load_state_into, register_architecture


@register_quantizer("sign", "act", bits=(1, 1))
class SignActivation(nn.Module):
    """Binary inputs ``sign(x)`` (0 counts as +1) with the clipped straight-through gradient."""

    def __init__(self, scheme: QuantScheme, clip: float = 1.0) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x, self.clip)


class XnorConv2d(nn.Conv2d):
    """``conv(sign(I), W) . K + bias``, ``K`` the box-filtered mean ``|I|`` (the weight binarized by its quantizer)."""

    input_quantizer: nn.Module
    act_scaling: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(self.input_quantizer(x), self.weight, None)
        if self.act_scaling:
            kh, kw = self.kernel_size
            box = x.new_full((1, 1, kh, kw), 1.0 / (kh * kw))
            y = y * F.conv2d(x.abs().mean(dim=1, keepdim=True), box, None, self.stride, self.padding, self.dilation)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)


class XnorLinear(nn.Linear):
    """``linear(sign(I), W) . K + bias``, ``K`` the mean ``|I|`` of each input row."""

    input_quantizer: nn.Module
    act_scaling: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(self.input_quantizer(x), self.weight)
        if self.act_scaling:
            y = y * x.abs().mean(dim=-1, keepdim=True)
        return y if self.bias is None else y + self.bias


def _xnor_twin(layer: nn.Module, act_scaling: bool) -> Layer:
    twin: XnorConv2d | XnorLinear
    if isinstance(layer, nn.Conv2d):
        twin = conv2d_like(XnorConv2d, layer)
    elif isinstance(layer, nn.Linear):
        twin = XnorLinear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    else:
        raise TypeError(f"XNOR binarizes conv and linear layers, not {type(layer).__name__}")
    twin.load_state_dict(layer.state_dict())
    twin.input_quantizer = create_quantizer("sign", "act", QuantScheme(bits=1, symmetric=False))
    twin.act_scaling = act_scaling
    return twin


def to_xnor(model: nn.Module, names: list[str], act_scaling: bool) -> dict[str, Layer]:
    """Replace the layers ``names`` of ``model`` (in place) by their binary-input twins; return them."""
    twins = {}
    for name in names:
        twins[name] = _xnor_twin(model.get_submodule(name), act_scaling)
        model.set_submodule(name, twins[name])
    return twins


@register_architecture("xnor")
def _xnor_model(template: nn.Module, state: StoredState) -> nn.Module:
    """The float ``template`` with its stored XNOR layers (binary inputs), the stored tensors loaded."""
    model = copy.deepcopy(template)
    to_xnor(model, state.meta["xnor_layers"], state.meta["act_scaling"])
    return load_state_into(model, state).eval()


def _float_ends() -> LayerSelection:
    return LayerSelection(first=False, last=False)


@dataclass
class XnorConfig(BinaryConfig):
    """conf/method/xnor.yaml: the input scaling K, the fine-tuning, the layers (first and last stay float)."""

    act_scaling: bool = option(True, why="scale outputs by K, the mean |input| of each window")
    layers: LayerSelection = option(factory=_float_ends)


class XnorNet(CompressionMethod):
    """``xnor``: binary weights (alpha per filter) and binary inputs (K), first and last layers in float."""

    name = "xnor"
    Config = XnorConfig
    config: XnorConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        act_scaling = self.config.act_scaling

        def prepare(copied: nn.Module, layers: dict[str, Layer]) -> dict[str, Layer]:
            return to_xnor(copied, list(layers), act_scaling)

        quantized = train_quantized(model, ctx, self.config, lambda _name, _layer: weight_quantizer("bwn", 1),
                                    act_bits=1, prepare=prepare)
        return store_quantized(self.name, quantized, model, ctx, architecture="xnor",
                               meta={"xnor_layers": list(quantized.layer_bits),
                                     "act_scaling": act_scaling})
