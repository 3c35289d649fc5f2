"""The simulator's mixing kernels: the cheapest kind for each graph, all equal to W @ x."""

from __future__ import annotations

import pytest
import torch

from nettrain.engines.sim.mixing import Mixing
from nettrain.topology import build_topology

CASES = [  # (kind, n, options, kernel expected)
    ("complete", 2, {}, "diagonals"),
    ("ring", 3, {}, "diagonals"),
    ("ring", 64, {}, "diagonals"),
    ("ring", 64, {"schedule": "edge_drop", "drop_prob": 0.3}, "diagonals"),  # weights vary
    ("exponential", 64, {"schedule": "one_peer_exponential"}, "diagonals"),
    ("complete", 8, {}, "dense"),
    ("torus", 64, {}, "sparse"),
    ("star", 64, {}, "sparse"),
    ("erdos_renyi", 64, {"edge_prob": 0.05, "schedule": "random_matching"}, "sparse"),
]


@pytest.mark.parametrize("kind, n, options, expected", CASES)
def test_each_kernel_computes_w_times_x(kind: str, n: int, options: dict, expected: str) -> None:
    topology = build_topology(kind, n, seed=1, **options)
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in range(3):
        W = topology.sparse_weights(t)
        mixing = Mixing.of(W, x.device, x.dtype)
        assert mixing.kind == expected
        out = mixing(x)
        torch.testing.assert_close(out, topology.weights(t) @ x, rtol=0, atol=1e-14)
        torch.testing.assert_close(out.mean(0), x.mean(0), rtol=0, atol=1e-14)  # doubly stochastic
        assert out.data_ptr() != x.data_ptr()


def test_the_diagonal_kernel_reads_per_row_weights() -> None:
    """A ring whose edges were dropped keeps its diagonals with weights that vary by row."""
    topology = build_topology("ring", 16, schedule="edge_drop", drop_prob=0.5, seed=4)
    mixing = Mixing.of(topology.sparse_weights(0), torch.device("cpu"), torch.float64)
    assert mixing.kind == "diagonals" and any(isinstance(w, torch.Tensor) for w in mixing.weights)


@pytest.mark.parametrize("kind, n, options, expected", CASES[:5])
def test_the_diagonal_kernel_in_row_blocks_is_the_whole_kernel_bit_for_bit(
    monkeypatch, kind: str, n: int, options: dict, expected: str
) -> None:
    """Blocks of 1, 3 and 5 rows (splitting wrapped diagonals inside a block) give each
    entry the arithmetic of one pass over all rows, in the same order."""
    from nettrain.engines.sim import mixing as module

    topology = build_topology(kind, n, seed=1, **options)
    x = torch.randn(n, 7, generator=torch.Generator().manual_seed(0))  # float32: order shows
    for t in range(2):
        mixing = Mixing.of(topology.sparse_weights(t), x.device, x.dtype)
        monkeypatch.setattr(module, "BLOCK_BYTES", 2**40)
        whole = mixing(x)
        for rows in (1, 3, 5):
            monkeypatch.setattr(module, "BLOCK_BYTES", rows * 7 * 4)
            assert torch.equal(mixing(x), whole)
