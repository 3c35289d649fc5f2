"""The shared-memory engine trains the user's own model and data too."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

import nettrain
from helpers import DropoutNet


def test_workers_train_the_users_model() -> None:
    """Two spawned workers run Hogwild on a user module with dropout on (N, 1, 8, 8)
    images; the mean model, evaluated with plain PyTorch, has the recorded accuracy."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16
    y = torch.tensor(d.target, dtype=torch.int32)
    data = nettrain.data.from_tensors(x[:1400], y[:1400], x[1400:], y[1400:])
    config = {"engine": "shared_memory", "algorithm": "hogwild", "processes": 2, "rounds": 50}
    result = nettrain.run(config | {"progress": False}, model=DropoutNet(), data=data)
    net = result.mean_model()
    assert isinstance(net, DropoutNet)
    with torch.no_grad():
        accuracy = (net(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert accuracy == result.records[-1]["test_accuracy"]
    assert accuracy > 0.5  # 100 SGD steps on digits; chance is 0.1
