"""LeNet-300-100 and LeNet-5 as used by Deep Compression, and the MLPs of Hinton et al.'s distillation.

Han, Mao, Dally, "Deep Compression" (ICLR 2016), Table 1 and Han et al., "Learning both
Weights and Connections for Efficient Neural Networks" (NeurIPS 2015), Table 1:

- LeNet-300-100: a 784-300-100-10 multilayer perceptron with ReLU (266,610 parameters).
- LeNet-5: the Caffe variant (``examples/mnist/lenet_train_test.prototxt``): conv 20@5x5,
  max-pool 2, conv 50@5x5, max-pool 2, fc 500, ReLU, fc 10 (431,080 parameters).
  Like the Caffe net there is no non-linearity after the convolutions.
- ``mlp``: LeNet-300-100's class at any two widths, with dropout: Hinton, Vinyals, Dean,
  "Distilling the Knowledge in a Neural Network" (2015), Sec. 3's MNIST teacher and students.

Departures: ``in_chans`` and ``num_classes`` are free (the papers fix 1 and 10), so the
same nets serve any 28x28 data set; the input size itself is fixed at 28x28 because the
first fully connected layer's width depends on it.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn
from torch.nn import functional as F

from benchmarks.models._entrypoint import architecture_args, data_config

IMAGE_SIZE = 28
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class LeNet300100(nn.Module):
    """Fully connected LeNet: flatten, then two ``hidden_features`` ReLU layers, then a classifier.

    ``dropout`` (after each hidden layer) and ``input_dropout`` (on the pixels) are functional, so a
    net without them has exactly LeNet-300-100's modules; Hinton et al. (2012, 2015) regularise
    their MNIST teacher with 0.5 and 0.2.
    """

    def __init__(
        self,
        hidden_features: tuple[int, ...] = (300, 100),
        num_classes: int = 10,
        in_chans: int = 1,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(hidden_features) != 2:
            raise ValueError(f"hidden_features={list(hidden_features)}: this net has exactly two hidden layers "
                             "(give two widths, e.g. [800, 800])")
        for key, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{key}={p}: a dropout probability lies in [0, 1)")
        self.num_classes = num_classes
        self.dropout = float(dropout)
        self.input_dropout = float(input_dropout)
        widths = (in_chans * IMAGE_SIZE * IMAGE_SIZE, *hidden_features)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(widths[0], widths[1])
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(widths[1], widths[2])
        self.relu2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(widths[2], num_classes)
        self.pretrained_cfg = data_config(
            (in_chans, IMAGE_SIZE, IMAGE_SIZE), MNIST_MEAN * in_chans, MNIST_STD * in_chans,
            num_classes, first_conv="fc1", classifier="fc3",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.flatten(x), self.input_dropout, self.training)
        x = F.dropout(self.relu1(self.fc1(x)), self.dropout, self.training)
        x = F.dropout(self.relu2(self.fc2(x)), self.dropout, self.training)
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe LeNet-5: two 5x5 convolutions with 2x2 max-pooling, then two fully connected layers."""

    def __init__(
        self,
        conv_channels: tuple[int, int] = (20, 50),
        hidden_features: int = 500,
        num_classes: int = 10,
        in_chans: int = 1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, conv_channels[0], kernel_size=5)  # 28 -> 24
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)                 # 24 -> 12
        self.conv2 = nn.Conv2d(conv_channels[0], conv_channels[1], kernel_size=5)  # 12 -> 8
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)                 # 8 -> 4
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(conv_channels[1] * 4 * 4, hidden_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_features, num_classes)
        self.pretrained_cfg = data_config(
            (in_chans, IMAGE_SIZE, IMAGE_SIZE), MNIST_MEAN * in_chans, MNIST_STD * in_chans,
            num_classes, first_conv="conv1", classifier="fc2",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc2(x)


@register_model
def lenet_300_100(pretrained: bool = False, **kwargs: Any) -> LeNet300100:
    """LeNet-300-100 (784-300-100-10 MLP, Han et al. 2015 Table 1): 266,610 parameters."""
    return LeNet300100(hidden_features=(300, 100), **architecture_args("lenet_300_100", pretrained, kwargs))


@register_model
def mlp(pretrained: bool = False, **kwargs: Any) -> LeNet300100:
    """A 784-w-w-10 ReLU MLP of any width ``hidden_features=[w, w]``, with optional dropout: the nets of
    Hinton et al. (2015, Sec. 3), whose MNIST teacher is 1200-1200 with dropout (the default here) and
    whose students are 800-800 and 30-30 without."""
    args = {"hidden_features": (1200, 1200), "dropout": 0.5, "input_dropout": 0.2, **kwargs}
    return LeNet300100(**architecture_args("mlp", pretrained, args))


@register_model
def lenet5(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """Caffe LeNet-5 (conv 20@5x5, conv 50@5x5, fc 500, fc 10; Han et al. 2015 Table 1): 431,080 parameters."""
    return LeNet5(conv_channels=(20, 50), hidden_features=500, **architecture_args("lenet5", pretrained, kwargs))
