"""What carrying model state costs the vectorised oracle: buffers, dropout, plumbing.

For ``n`` agents (default 64) on Fashion-MNIST images, batch 32, this times
``Oracle.grad`` (one vmapped forward and backward of every agent, its sampling and
bookkeeping) for four models of the same shape:

* ``plain``: MLP 784-128-10 (no buffers, no dropout);
* ``dropout``: the same with ``nn.Dropout(0.2)`` after the hidden layer (per-agent
  seeded masks, :mod:`nettrain.problem.random_layers`);
* ``batchnorm``: the same with ``nn.BatchNorm1d(128)`` (per-agent running statistics);
* ``both``: BatchNorm and dropout;

and ``bare``: the plain MLP through a hand-written ``vmap(grad_and_value(loss))`` on
pre-sampled batches, the oracle's core without sampling, buffers or keys;
``bare_torch_dropout``: the same with torch's own dropout under
``vmap(randomness="different")`` (one global stream, so not reproducible per agent),
the cost seeded dropout is to be compared with. The six
alternate within every repetition, so load hits them alike; figures are agent-steps
per second of the best repetition, and ratios to ``plain`` within one run.

Command: ``.venv/bin/python benchmarks/oracle_state.py [--agents 64] [--repeats 5]``.
Output: one JSON line per model and a summary line with the ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from nettrain.data import load_dataset
from nettrain.problem.losses import Regularizer, cross_entropy
from nettrain.problem.oracle import Problem


def mlp(batchnorm: bool, dropout: bool) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(784, 128)]
    layers += [nn.BatchNorm1d(128)] if batchnorm else []
    layers += [nn.ReLU()] + ([nn.Dropout(0.2)] if dropout else []) + [nn.Linear(128, 10)]
    return nn.Sequential(*layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="oracle calls per repetition")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_dataset("fashion_mnist", train_samples=12800)
    n, batch = args.agents, 32
    shards = list(torch.arange(len(data.y_train)).chunk(n))
    runs: dict[str, Callable[[], None]] = {}
    for name, bn, drop in [
        ("plain", False, False),
        ("dropout", False, True),
        ("batchnorm", True, False),
        ("both", True, True),
    ]:
        problem = Problem(mlp(bn, drop), cross_entropy, Regularizer(), data)
        oracle = problem.oracle(shards, range(n), batch_size=batch, seed=0)
        x = problem.initial_params(0).expand(n, -1).clone()
        runs[name] = lambda oracle=oracle, x=x: oracle.grad(x)

    bare = Problem(mlp(False, False), cross_entropy, Regularizer(), data)
    xb = torch.stack([data.x_train[s[:batch]] for s in shards])  # (n, B, 1, 28, 28)
    yb = torch.stack([data.y_train[s[:batch]] for s in shards])

    def loss(v: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cross_entropy(functional_call(bare.model, bare.spec.unflatten(v), (a,)), t).mean()

    core = vmap(grad_and_value(loss))
    x0 = bare.initial_params(0).expand(n, -1).clone()
    runs["bare"] = lambda: core(x0, xb, yb)
    dropped = Problem(mlp(False, True), cross_entropy, Regularizer(), data)  # torch's dropout

    def dropped_loss(v: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = functional_call(dropped.template, dropped.spec.unflatten(v), (a,))
        return cross_entropy(out, t).mean()

    torch_dropout = vmap(grad_and_value(dropped_loss), randomness="different")
    runs["bare_torch_dropout"] = lambda: torch_dropout(x0, xb, yb)

    best = {name: 0.0 for name in runs}
    for _ in range(args.repeats):
        for name, call in runs.items():
            call()  # warm
            start = time.perf_counter()
            for _ in range(args.steps):
                call()
            rate = n * args.steps / (time.perf_counter() - start)
            best[name] = max(best[name], rate)
    for name, rate in best.items():
        print(json.dumps({"model": name, "agents": n, "agent_steps_per_s": round(rate, 1)}))
    ratios = {f"{k}_vs_plain": round(v / best["plain"], 3) for k, v in best.items()}
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__} | ratios))


if __name__ == "__main__":
    main()
