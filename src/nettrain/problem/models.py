"""Model factories: small networks whose state lives entirely in parameters.

Models take a batch in the data's natural shape, ``(B, *feature_shape)``: the MLP
flattens it first (so it accepts images and tabular rows alike), the CNN needs
images ``(B, C, H, W)``. Data and oracle code never care which model runs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from itertools import pairwise

from torch import nn

from nettrain.errors import ConfigError

MODELS = ("mlp", "linear", "cnn")


class MLP(nn.Sequential):
    """``Flatten -> Linear -> ReLU -> ... -> Linear``; no hidden layer gives a linear model.

    ``n_inputs`` is the number of values per sample, ``prod(feature_shape)``.
    """

    def __init__(self, n_inputs: int, hidden: Sequence[int], n_outputs: int) -> None:
        layers: list[nn.Module] = [nn.Flatten()]  # (B, *feature_shape) -> (B, n_inputs)
        widths = [n_inputs, *hidden]
        for a, b in pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], n_outputs))
        super().__init__(*layers)


class SmallCNN(nn.Sequential):
    """Two 3x3 convolutions with 2x2 max-pooling, then a linear classifier.

    ``conv(C->c1) -> ReLU -> pool -> conv(c1->c2) -> ReLU -> pool -> Linear`` on images
    ``(B, C, H, W)``; for 28x28 inputs with ``channels=(8, 16)`` that is 11k parameters.
    The parameters are ``conv1.*``, ``conv2.*`` and ``head.*``.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], n_outputs: int, channels: Sequence[int] = (8, 16)
    ) -> None:
        c, h, w = image_shape
        if h < 4 or w < 4:
            raise ConfigError(f"model=cnn needs images of at least 4x4 pixels, got {h}x{w}")
        c1, c2 = channels
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(c, c1, 3, padding=1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),  # (B, c1, H/2, W/2)
                conv2=nn.Conv2d(c1, c2, 3, padding=1),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),  # (B, c2, H/4, W/4)
                flatten=nn.Flatten(),
                head=nn.Linear(c2 * (h // 4) * (w // 4), n_outputs),
            )
        )


def build_model(
    kind: str,
    feature_shape: int | Sequence[int],
    n_outputs: int,
    *,
    hidden: Sequence[int] = (32,),
) -> nn.Module:
    """Build ``kind`` in {mlp, linear, cnn} for one sample's feature shape and outputs.

    ``feature_shape`` is :attr:`Dataset.feature_shape <nettrain.data.Dataset.feature_shape>`,
    e.g. ``(1, 28, 28)`` or ``(30,)``; an int ``F`` means ``(F,)``. The cnn needs
    images, a feature shape ``(C, H, W)``.
    """
    shape = (feature_shape,) if isinstance(feature_shape, int) else tuple(feature_shape)
    if kind == "mlp":
        return MLP(math.prod(shape), hidden, n_outputs)
    if kind == "linear":
        return MLP(math.prod(shape), (), n_outputs)
    if kind == "cnn":
        if len(shape) != 3:
            raise ConfigError(
                f"model=cnn needs an image data set (digits, fashion_mnist) whose samples have "
                f"shape (C, H, W), got {shape}; use model=mlp for tabular data"
            )
        c, h, w = shape
        return SmallCNN((c, h, w), n_outputs)
    raise ConfigError(f"model={kind!r} is unknown; choose one of {', '.join(MODELS)}")
