"""Model factories: small networks whose state lives entirely in parameters.

Every model takes flattened inputs ``(B, F)``; the CNN reshapes them to its image
shape itself, so data and oracle code never care which model runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from nettrain.errors import ConfigError

MODELS = ("mlp", "linear", "cnn")


class MLP(nn.Sequential):
    """``Linear -> ReLU -> ... -> Linear``; no hidden layer gives a linear model."""

    def __init__(self, n_inputs: int, hidden: Sequence[int], n_outputs: int) -> None:
        layers: list[nn.Module] = []
        widths = [n_inputs, *hidden]
        for a, b in pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], n_outputs))
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with 2x2 max-pooling, then a linear classifier.

    ``conv(C->c1) -> ReLU -> pool -> conv(c1->c2) -> ReLU -> pool -> Linear``; for
    28x28 inputs with ``channels=(8, 16)`` that is 11k parameters.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], n_outputs: int, channels: Sequence[int] = (8, 16)
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        if h < 4 or w < 4:
            raise ConfigError(f"model=cnn needs images of at least 4x4 pixels, got {h}x{w}")
        c1, c2 = channels
        self.image_shape = image_shape
        self.conv1 = nn.Conv2d(c, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(c2 * (h // 4) * (w // 4), n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, *self.image_shape)  # (B, C, H, W)
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.head(x.flatten(1))


def build_model(
    kind: str,
    n_inputs: int,
    n_outputs: int,
    *,
    hidden: Sequence[int] = (32,),
    image_shape: tuple[int, int, int] | None = None,
) -> nn.Module:
    """Build ``kind`` in {mlp, linear, cnn} for the given input and output sizes."""
    if kind == "mlp":
        return MLP(n_inputs, hidden, n_outputs)
    if kind == "linear":
        return MLP(n_inputs, (), n_outputs)
    if kind == "cnn":
        if image_shape is None:
            raise ConfigError(
                "model=cnn needs an image data set (digits, fashion_mnist); "
                "use model=mlp for tabular data"
            )
        return SmallCNN(image_shape, n_outputs)
    raise ConfigError(f"model={kind!r} is unknown; choose one of {', '.join(MODELS)}")
