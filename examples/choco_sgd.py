"""A new method written outside nettrain: CHOCO-SGD, run on both engines unchanged.

CHOCO-SGD (Koloskova, Stich and Jaggi, "Decentralized Stochastic Optimization and
Gossip Algorithms with Compressed Communication", ICML 2019, Algorithm 1) gossips
compressed differences. Agent i keeps its model x_i, a public copy x^_i that its
neighbours track exactly, and s_i = sum_j W_ij x^_j (the memory-efficient form)::

    x_i <- x_i - lr * g_i(x_i)
    q_i  = Q(x_i - x^_i)                  sent to the neighbours (top-k: a few values)
    x^_i <- x^_i + q_i,   s_i <- s_i + sum_j W_ij q_j
    x_i <- x_i + gamma * (s_i - x^_i)

Run it: ``python examples/choco_sgd.py`` (simulator), ``torchrun --nproc-per-node 8
examples/choco_sgd.py --engine distributed``, or from the command line with
``nettrain run algorithm=choco_sgd:ChocoSGD lr=0.05`` in this folder.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

import nettrain
from nettrain.algorithms import Algorithm
from nettrain.compression import TopK


@dataclass(frozen=True)
class ChocoState:
    x: torch.Tensor  # (m, d) models
    x_hat: torch.Tensor  # (m, d) public copies, known to every neighbour
    s: torch.Tensor  # (m, d) sum_j W_ij x^_j


@dataclass(frozen=True)
class ChocoSGD(Algorithm[ChocoState]):
    """CHOCO-SGD with top-k compression of the differences (Koloskova et al. 2019)."""

    lr: float = 0.05
    gamma: float = 0.5  # consensus step size
    ratio: float = 0.1  # share of coordinates each message carries

    @property
    def compressor(self) -> TopK:  # what the engine sends the mixes through
        return TopK(ratio=self.ratio)

    def init(self, x0, oracle, comm) -> ChocoState:
        return ChocoState(x0, torch.zeros_like(x0), torch.zeros_like(x0))

    def step(self, state: ChocoState, t: int, oracle, comm):
        loss, g = oracle.grad(state.x)
        x = state.x - self.lr * g
        q = self.compressor.decode(self.compressor.encode(x - state.x_hat))  # ratio * d nonzeros
        x_hat = state.x_hat + q
        s = state.s + comm.mix(q, t)  # q is top-k already: sent exactly, few bytes
        return ChocoState(x + self.gamma * (s - x_hat), x_hat, s), loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="sim", choices=["sim", "distributed"])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", default="runs/choco_sgd")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    config = {
        "engine": args.engine,
        "agents": args.agents,
        "rounds": args.rounds,
        "topology": "ring",
        "dtype": args.dtype,
        "eval_every": 25,
        "progress": False,
    }
    result = nettrain.run(config, algorithm=ChocoSGD(lr=0.05), out=args.out)
    if result.is_main:
        last = result.records[-1]
        print(
            f"CHOCO-SGD on {args.engine}: test accuracy {last['test_accuracy']:.4f}, "
            f"{last['bytes_total']:,} bytes sent, "
            f"consensus distance {last['consensus_distance']:.2e}"
        )


if __name__ == "__main__":
    main()
