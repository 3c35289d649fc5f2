"""Your own CNN, with BatchNorm and dropout, on Fashion-MNIST images, from Python.

The model is a plain ``nn.Module``: nettrain copies it per agent, keeps every agent's
BatchNorm statistics, and gives each agent its own seeded dropout masks. The data are
the user's tensors (images stay images, ``(N, 1, 28, 28)``; labels of any integer
dtype). After training, the agents' average model comes back as a ``FashionNet`` and is
evaluated with plain PyTorch: its accuracy is the run's recorded ``test_accuracy``.

Run it: ``python examples/own_cnn.py`` (simulator), or on 4 processes with
``torchrun --nproc-per-node 4 examples/own_cnn.py --engine distributed``. Fashion-MNIST
comes from Debian's ``dataset-fashion-mnist`` (IDX files under
``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

import nettrain
from nettrain.data import from_tensors, read_idx

FOLDER = Path("/usr/share/datasets/fashion-mnist")


class FashionNet(nn.Module):
    """conv(1->8) -> BatchNorm -> ReLU -> pool -> conv(8->16) -> BatchNorm -> ReLU -> pool
    -> dropout -> linear."""

    def __init__(self, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(784, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def fashion_mnist(train: int, test: int) -> nettrain.data.Dataset:
    """The first ``train`` and ``test`` images, scaled to [0, 1], labels as int32."""

    def images(name: str, k: int) -> np.ndarray:
        return read_idx(FOLDER / f"{name}-images-idx3-ubyte.gz")[:k, None] / np.float32(255)

    def labels(name: str, k: int) -> np.ndarray:
        return read_idx(FOLDER / f"{name}-labels-idx1-ubyte.gz")[:k].astype(np.int32)

    return from_tensors(
        images("train", train), labels("train", train), images("t10k", test), labels("t10k", test)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="sim", choices=["sim", "distributed"])
    parser.add_argument("--algorithm", default="dpsgd", help="any nettrain method, e.g. swarm")
    parser.add_argument("--momentum", type=float, default=0.9, help="0 for swarm")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--train", type=int, default=12000, help="training images used")
    parser.add_argument("--test", type=int, default=2000, help="test images used")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--out", default="runs/own_cnn")
    args = parser.parse_args()

    data = fashion_mnist(args.train, args.test)
    config = {
        "algorithm": args.algorithm,
        "engine": args.engine,
        "agents": args.agents,
        "topology": "ring",
        "rounds": args.rounds,
        "batch_size": 32,
        "lr": 0.05,
        "momentum": args.momentum,
        "eval_every": 50,
        "dtype": args.dtype,
        "progress": False,
    }
    result = nettrain.run(config, model=FashionNet(), data=data, out=args.out)

    net = result.mean_model()  # a FashionNet (in the run's dtype), in evaluation mode
    with torch.no_grad():
        predicted = net(data.x_test.to(getattr(torch, args.dtype))).argmax(1)
    accuracy = (predicted == data.y_test).float().mean().item()
    if result.is_main:
        print(
            f"mean model, plain PyTorch: {accuracy:.4f}; "
            f"recorded: {result.records[-1]['test_accuracy']:.4f}"
        )


if __name__ == "__main__":
    main()
