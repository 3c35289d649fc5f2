from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import GOLDEN, iid_shards, least_squares_problem, regression_data, splitmix64
from nettrain.data import Dataset
from nettrain.errors import ConfigError
from nettrain.problem.execution import Execution
from nettrain.problem.flat import FlatSpec, matmul_flops_per_sample
from nettrain.problem.losses import Regularizer, get_loss, per_sample
from nettrain.problem.models import build_model
from nettrain.problem.oracle import DROPOUT_STREAM, Meter, Oracle, Problem, agent_seed
from nettrain.problem.random_layers import _integers53_numpy, _integers53_torch, integers53
from nettrain.problem.vectorise import training


def classification_problem(model: str = "mlp", execution: Execution | None = None) -> Problem:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(90, 1, 4, 4, generator=gen, dtype=torch.float64)  # (N, C, H, W)
    y = torch.randint(0, 3, (90,), generator=gen)
    data = Dataset("toy", x, y, x[:30], y[:30], n_classes=3)
    net = build_model(model, (1, 4, 4), 3, hidden=(8,)).double()
    return Problem(
        net, get_loss("cross_entropy"), Regularizer("l2", 0.01), data,
        execution=execution or Execution(),
    )  # fmt: skip


def test_flat_views_round_trip() -> None:
    net = build_model("mlp", 6, 3, hidden=(5,))
    spec = FlatSpec.of(net)
    x = spec.flatten(net)
    assert x.shape == (6 * 5 + 5 + 5 * 3 + 3,) == (spec.dim,)
    views = spec.unflatten(x)
    for p, v in zip(net.parameters(), views.values(), strict=True):
        assert torch.equal(p, v) and v.data_ptr() >= x.data_ptr()  # views, no copies
    assert matmul_flops_per_sample(spec) == 2 * (6 * 5 + 5 * 3)


def test_stacked_views_are_each_parameters_columns_of_any_stack() -> None:
    """``FlatSpec.stacked`` of a stack, of a block of its rows and of a transposed
    (column-major) stack views each agent's parameters as ``unflatten`` of its row does,
    and writes through to the stack."""
    spec = FlatSpec.of(build_model("cnn", (1, 4, 4), 3, hidden=(5,)))  # 4-D, 1-D shapes
    base = torch.arange(7 * spec.dim, dtype=torch.float64).view(7, spec.dim)
    for x in (base, base[2:5], base.t().contiguous().t()):
        views = spec.stacked(x)
        for i in range(len(x)):
            for name, v in spec.unflatten(x[i]).items():
                assert torch.equal(views[name][i], v), name
        views[spec.names[-1]][-1].fill_(-1.0)
        assert bool((x[-1, -spec.numels[-1] :] == -1).all())


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_vectorised_gradient_equals_per_agent_autograd(model: str) -> None:
    problem = classification_problem(model)
    shards = [torch.arange(0, 25), torch.arange(25, 60), torch.arange(60, 90)]  # unequal sizes
    oracle = problem.oracle(shards, [0, 1, 2], batch_size=0, seed=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, problem.dim, generator=gen, dtype=torch.float64) * 0.3
    loss, g = oracle.grad(x)  # (3,), (3, d)
    for i, s in enumerate(shards):
        net = build_model(model, (1, 4, 4), 3, hidden=(8,)).double()
        problem.spec.load_into(net, x[i])
        out = nn.functional.cross_entropy(net(problem.data.x_train[s]), problem.data.y_train[s])
        out = out + 0.01 * sum(p.square().sum() for p in net.parameters())
        out.backward()
        ref = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        torch.testing.assert_close(loss[i], out.detach())
        torch.testing.assert_close(g[i], ref)
    assert oracle.meter.reset().tolist() == [25, 35, 30]


def test_meter_times_the_passes_and_hands_them_over_once() -> None:
    """``meter.seconds`` adds the time of every gradient and linearisation on the meter's
    clock (what a distributed straggler sleeps a multiple of); ``take_seconds`` returns
    it and starts again from 0. A clock that advances 0.25 s a reading makes each pass
    0.25 s. State on the CPU is timed by the thread's CPU time, on an accelerator by
    wall time."""
    problem = least_squares_problem(regression_data(60, 3))
    oracle = problem.oracle(iid_shards(60, 3), range(3), batch_size=4, seed=0)
    assert oracle.meter.clock is time.thread_time
    assert Meter.zeros(2, "meta").clock is time.perf_counter
    x = problem.initial_params(0).expand(3, -1)
    ticks = iter(np.arange(0.0, 100.0, 0.25))
    oracle.meter.clock = lambda: float(next(ticks))
    oracle.grad(x)
    oracle.grad(x[1:2], torch.tensor([1]))
    assert oracle.meter.seconds == 0.5
    oracle.linearize(x)
    assert oracle.meter.take_seconds() == 0.75
    assert oracle.meter.seconds == 0.0 and oracle.meter.take_seconds() == 0.0


def test_agent_batches_do_not_depend_on_grouping() -> None:
    """Agent 2 draws the same batches alone (one process) as in a stack of four.

    Alone, the gradient takes plain autograd instead of vmap: equal up to float64
    rounding (another batch would change it at the first digit)."""
    problem = least_squares_problem(regression_data())
    shards = iid_shards(120, 4)
    stacked = problem.oracle(shards, range(4), batch_size=5, seed=7)
    alone = problem.oracle(shards[2:3], [2], batch_size=5, seed=7)
    x = problem.initial_params(0).expand(4, -1).clone()
    for _ in range(3):
        _, g_all = stacked.grad(x)
        _, g_one = alone.grad(x[2:3])
        torch.testing.assert_close(g_all[2:3], g_one, rtol=1e-12, atol=1e-12)
    other_seed = problem.oracle(shards[2:3], [2], batch_size=5, seed=8)
    assert not torch.equal(other_seed.grad(x[2:3])[1], g_one)


def test_one_agents_own_module_draws_its_dropout_masks_as_in_the_stack() -> None:
    """Alone, an agent with dropout and a loss of the user's runs its own module
    (``_module_grad``, its nested layers' parameters set by their full names) with its
    own dropout key: the masks, and so the gradient, of its row in a stack of four
    (autograd through the batched model)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (80,), generator=gen)
    data = Dataset("toy", x, y, x[:20], y[:20], n_classes=3)
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(6, 5), nn.ReLU())  # nested: parameter names "0.0.weight"
    net = nn.Sequential(inner, nn.Dropout(0.5), nn.Linear(5, 3)).double()
    loss = per_sample(nn.CrossEntropyLoss(reduction="none"))
    problem = Problem(net, loss, Regularizer(), data)
    shards = [torch.arange(k * 20, k * 20 + 20) for k in range(4)]
    stacked = problem.oracle(shards, range(4), batch_size=5, seed=7)
    alone = problem.oracle(shards[2:3], [2], batch_size=5, seed=7)
    assert alone._kernel(1) == alone._module_grad
    p = problem.initial_params(0).expand(4, -1).clone()
    for _ in range(3):
        _, g_all = stacked.grad(p)
        _, g_one = alone.grad(p[2:3])
        torch.testing.assert_close(g_all[2:3], g_one, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------- mini-batch streams


def splitmix64_53(seed: int, k: int) -> int:
    """SplitMix64's output number ``k`` from ``seed``, top 53 bits: Python integers."""
    return splitmix64(seed + (k + 1) * GOLDEN) >> 11


def test_integers53_is_splitmix64_row_by_row() -> None:
    assert integers53(torch.tensor([0]), torch.tensor([[0]])).item() == 0xE220A8397B1DCDAF >> 11
    keys = torch.tensor([0, 1, agent_seed(7, 3), (1 << 63) - 1])
    counters = torch.tensor([[0, 1, 2], [5, 6, 7], [0, 1 << 40, 3], [9, 8, 7]])
    u = integers53(keys, counters)
    expected = [
        [splitmix64_53(k, c) for c in row]
        for k, row in zip(keys.tolist(), counters.tolist(), strict=True)
    ]
    assert u.tolist() == expected and u.dtype == torch.int64
    assert int(u.min()) >= 0 and int(u.max()) < 1 << 53
    assert torch.equal(integers53(keys[2:3], counters[2:3]), u[2:3])  # rows are independent
    # the int64 tensor form that other devices run (here on the CPU) agrees with the
    # written-out reference and with the CPU's numpy form
    assert _integers53_torch(keys, counters).tolist() == expected
    many = torch.randint(-(1 << 62), 1 << 62, (5,), generator=torch.Generator().manual_seed(0))
    wide = torch.arange(5 * 64).view(5, 64) * 7919 + (1 << 45)
    assert torch.equal(_integers53_numpy(many, wide), _integers53_torch(many, wide))
    assert torch.equal(_integers53_numpy(keys, counters), u)


def shuffled_shards(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Shards of unequal ``sizes`` from a permutation of the 120 regression samples."""
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(seed))
    return list(perm[: sum(sizes)].split(sizes))


def drawn_samples(oracle: Oracle, shards: list[torch.Tensor], local: list[int]) -> torch.Tensor:
    """The data-set indices of the next batch ``(k, B)`` of ``oracle``'s agents ``local``."""
    idx, w = oracle._sample(torch.tensor(local))
    assert idx.shape == w.shape == (len(local), oracle.batch_size)
    return torch.cat(shards)[idx]


def test_a_batch_depends_only_on_seed_agent_and_count() -> None:
    """An agent draws the same batches alone (a distributed rank) as in a stack of all or
    in another grouping and order, also when only some agents are sampled in a call."""
    problem = least_squares_problem(regression_data())
    shards = shuffled_shards([17, 40, 23, 40])
    cases = {  # the agents an oracle holds: the rows sampled by each call
        (0, 1, 2, 3): ([0, 1, 2, 3], [1, 3], [2], [0, 1, 2, 3], [3, 0]),
        (3, 1): ([0, 1], [1], [1, 0], [0]),
    }
    for agents, calls in cases.items():
        mine = [shards[a] for a in agents]
        group = problem.oracle(mine, agents, batch_size=6, seed=7)
        alone = {a: problem.oracle([shards[a]], [a], batch_size=6, seed=7) for a in agents}
        for local in calls:
            got = drawn_samples(group, mine, local)
            for row, j in zip(got, local, strict=True):
                a = agents[j]
                assert torch.equal(row, drawn_samples(alone[a], [shards[a]], [0])[0])
        assert group.drawn.tolist() == [sum(j in c for c in calls) for j in range(len(agents))]


def test_indices_stay_in_the_shard_and_cover_it_uniformly() -> None:
    """Every index is in the agent's own shard; a shard of 7 samples is hit evenly
    (Pearson's chi-square with 6 degrees of freedom below its 1 - 1e-6 quantile, 38.3:
    a constant, a wrong modulo or a skipped sample gives thousands)."""
    problem = least_squares_problem(regression_data())
    shards = shuffled_shards([7, 50, 33])
    oracle = problem.oracle(shards, range(3), batch_size=16, seed=1)
    rounds = 700
    draws = torch.stack([drawn_samples(oracle, shards, [0, 1, 2]) for _ in range(rounds)])
    for i, shard in enumerate(shards):
        assert torch.isin(draws[:, i], shard).all()
    counts = (draws[:, 0].reshape(-1, 1) == shards[0]).sum(0).double()  # (7,)
    expected = rounds * 16 / 7
    assert counts.min() > 0
    assert float(((counts - expected).square() / expected).sum()) < 38.3
    counts = (draws[:, 1].reshape(-1, 1) == shards[1]).sum(0)
    assert counts.min() > 0  # all 50 samples of the larger shard drawn too


def test_agents_and_seeds_have_their_own_streams() -> None:
    problem = least_squares_problem(regression_data())
    shards = iid_shards(120, 4)  # equal sizes: equal streams would give equal positions
    oracle = problem.oracle(shards, range(4), batch_size=16, seed=7)
    idx, _ = oracle._sample(torch.arange(4))
    positions = idx - oracle.offsets[:, None]  # (4, 16), within each shard
    assert len({tuple(p) for p in positions.tolist()}) == 4
    other = problem.oracle(shards, range(4), batch_size=16, seed=8)
    idx8, _ = other._sample(torch.arange(4))
    assert not (idx8 == idx).all(1).any()
    again, _ = oracle._sample(torch.arange(4))  # the next batch is another one
    assert not (again == idx).all(1).any()


def sequential_problem(*layers: nn.Module, execution: Execution | None = None) -> Problem:
    """``Flatten`` then ``layers`` (built by the caller, under its seed), float64, with
    cross-entropy and no regulariser, on :func:`classification_problem`'s data."""
    net = nn.Sequential(nn.Flatten(), *layers).double()
    return Problem(
        net, get_loss("cross_entropy"), Regularizer(), classification_problem().data,
        execution=execution or Execution(),
    )  # fmt: skip


def stateful_problem(execution: Execution | None = None, dropout: bool = True) -> Problem:
    """BatchNorm (and dropout): ``local_state`` is the dict form."""
    torch.manual_seed(0)
    return sequential_problem(
        nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Dropout(0.3) if dropout else nn.Identity(), nn.Linear(8, 3), execution=execution,
    )  # fmt: skip


@pytest.mark.parametrize(("stateful", "dropout"), [(False, False), (True, False), (True, True)])
def test_local_state_round_trip_continues_the_streams(stateful: bool, dropout: bool) -> None:
    problem = stateful_problem(dropout=dropout) if stateful else classification_problem()
    shards = iid_shards(90, 3)
    x = problem.initial_params(0).expand(3, -1).clone()
    first = problem.oracle(shards, range(3), batch_size=4, seed=5)
    for local in (None, torch.tensor([1]), None):
        first.grad(x if local is None else x[local], local)
    state = first.local_state()
    batches = [s["batches"] if stateful else s for s in state]
    assert all(b.shape == () and b.dtype == torch.int64 for b in batches)
    assert [int(b) for b in batches] == [2, 3, 2]
    assert all(isinstance(s, dict) for s in state) == stateful
    for i, entry in enumerate(state if stateful else []):  # agent i's own buffer rows
        assert ("dropout" in entry) == dropout
        assert entry["buffers"].keys() == first.buffers.keys()
        assert all(torch.equal(b, first.buffers[k][i : i + 1]) for k, b in entry["buffers"].items())
    resumed = problem.oracle(shards, range(3), batch_size=4, seed=5)
    resumed.load_local_state(state)
    for _ in range(2):
        ia, wa = first._sample(torch.arange(3))
        ib, wb = resumed._sample(torch.arange(3))
        assert torch.equal(ia, ib) and torch.equal(wa, wb)
        la, ga = first.grad(x)
        lb, gb = resumed.grad(x)
        assert torch.equal(la, lb) and torch.equal(ga, gb)


@pytest.mark.parametrize("stateful", [False, True])
def test_a_checkpoint_with_generator_states_is_refused(stateful: bool) -> None:
    """nettrain before the counter-based streams saved a ``torch.Generator`` state."""
    problem = stateful_problem() if stateful else classification_problem()
    oracle = problem.oracle(iid_shards(90, 3), range(3), batch_size=4, seed=5)
    state = oracle.local_state()
    old = torch.Generator().manual_seed(0).get_state()
    if stateful:
        state[1] = state[1] | {"batches": old}
    else:
        state[1] = old
    message = (
        "this checkpoint was written by an earlier nettrain, whose mini-batch streams differ "
        "from this version's (it saved a torch.Generator state per agent, this version "
        "counts batches drawn): it cannot be continued; rerun from the start"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        oracle.load_local_state(state)
    assert oracle.drawn.tolist() == [0, 0, 0]  # nothing loaded
    with pytest.raises(ValueError, match=r"^2 agent states for 3 agents$"):
        oracle.load_local_state(state[:2])
    if not stateful:  # plain ints count batches too
        oracle.load_local_state([4, 0, 9])
        assert oracle.drawn.tolist() == [4, 0, 9]


def test_evaluate_matches_module() -> None:
    problem = classification_problem()
    x = torch.stack([problem.initial_params(s) for s in range(3)])
    ev = problem.evaluate(x, chunk=2)
    for i in range(3):
        net = build_model("mlp", 16, 3, hidden=(8,)).double()
        problem.spec.load_into(net, x[i])
        out = net(problem.data.x_test)
        acc = (out.argmax(1) == problem.data.y_test).double().mean()
        torch.testing.assert_close(ev.accuracy[i], acc.float(), check_dtype=False)
        torch.testing.assert_close(
            ev.loss[i], nn.functional.cross_entropy(out, problem.data.y_test).detach()
        )


def test_initial_params_seeded_and_isolated() -> None:
    problem = classification_problem()
    torch.manual_seed(123)
    before = torch.rand(1)
    a = problem.initial_params(5)
    torch.manual_seed(123)
    problem.initial_params(5)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG stream is untouched
    assert torch.equal(a, problem.initial_params(5))
    assert not torch.equal(a, problem.initial_params(6))


def test_regularizers() -> None:
    x = torch.tensor([[1.0, -2.0, 0.0]])
    assert Regularizer("l2", 0.5).value(x).item() == pytest.approx(2.5)
    assert Regularizer("l1", 0.5).value(x).item() == pytest.approx(1.5)
    assert Regularizer("l1", 0.5).grad(x).tolist() == [[0.5, -0.5, 0.0]]
    assert torch.equal(Regularizer("l2", 0.5).grad(x), x)
    with pytest.raises(ConfigError, match="reg_lambda"):
        Regularizer("l2", -1.0)


def test_squared_loss_on_class_labels_runs_under_vmap() -> None:
    """``loss=squared`` on a classification set regresses one-hot targets, in the oracle."""
    problem = classification_problem()
    problem.loss = get_loss("squared")
    oracle = problem.oracle(iid_shards(90, 3), range(3), batch_size=0, seed=0)
    x = problem.initial_params(0).expand(3, -1).clone()
    loss, _ = oracle.grad(x, smooth=True)
    data = problem.data
    for i, shard in enumerate(iid_shards(90, 3)):
        out = torch.func.functional_call(
            problem.model, problem.spec.unflatten(x[i]), (data.x_train[shard],)
        )
        target = torch.eye(3, dtype=torch.float64)[data.y_train[shard]]
        assert loss[i] == pytest.approx(float(0.5 * (out - target).square().sum(1).mean()))


def test_mode_blocks_restore_every_module_as_it_was() -> None:
    from nettrain.problem.vectorise import evaluation

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    net[1].eval()  # one module in evaluation mode, the rest training
    with training(net):
        assert all(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training
    net.train()
    with training(net):  # already so: nothing is set
        assert all(m.training for m in net.modules())
    with evaluation(net):
        assert not any(m.training for m in net.modules())
    assert all(m.training for m in net.modules())


@pytest.mark.parametrize("k", [1, 3])
def test_a_model_handed_over_in_evaluation_mode_still_trains(k: int) -> None:
    """The oracle's passes are training passes whatever mode the user left the model in
    (BatchNorm on the batch's statistics): the same losses, gradients and running
    statistics as the model in training mode; the model is left in evaluation mode."""
    shards = iid_shards(90, k)
    results = []
    for mode in ("train", "eval"):
        problem = stateful_problem(dropout=False)
        getattr(problem.model, mode)()
        oracle = problem.oracle(shards, range(k), batch_size=4, seed=1)
        x = problem.initial_params(0).expand(k, -1).clone()
        results.append((*oracle.grad(x), oracle.buffers["2.running_mean"].clone()))
        assert problem.model.training == (mode == "train")
    for trained, evaluated in zip(*results, strict=True):
        assert torch.equal(trained, evaluated)


def test_the_oracle_reads_its_samples_without_copying_the_data_set() -> None:
    problem = classification_problem()
    shards = [torch.arange(0, 25), torch.arange(60, 90)]
    oracle = problem.oracle(shards, [0, 1], batch_size=4, seed=0)
    assert oracle.x is problem.data.x_train and oracle.y is problem.data.y_train
    idx, _ = oracle._sample(None)  # local positions, agent after agent
    xb, yb = oracle.samples(idx)  # (2, 4, ...)
    rows = torch.cat(shards)[idx]
    assert torch.equal(xb, problem.data.x_train[rows]) and torch.equal(
        yb, problem.data.y_train[rows]
    )
    assert bool((rows[0] < 25).all()) and bool((rows[1] >= 60).all())  # each from its shard


def test_the_small_cnn_is_the_documented_network() -> None:
    """``conv(C->8) -> ReLU -> pool -> conv(8->16) -> ReLU -> pool -> Linear`` written out
    with ``torch.nn.functional`` on the model's own weights; images below 4x4 refused."""
    net = build_model("cnn", (2, 9, 6), 5).double()
    p = dict(net.named_parameters())
    x = torch.randn(3, 2, 9, 6, dtype=torch.float64)
    h = F.max_pool2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"], padding=1)), 2)
    expected = F.linear(h.flatten(1), p["head.weight"], p["head.bias"])
    assert p["head.weight"].shape == (5, 16 * 2 * 1)
    torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-12)
    for shape in [(1, 3, 8), (1, 8, 3)]:
        with pytest.raises(ConfigError, match=r"at least 4x4 pixels, got \d+x\d+"):
            build_model("cnn", shape, 5)


def test_build_model_refuses_unknown_models_and_a_cnn_of_vectors() -> None:
    """Whole messages: the known models listed; the cnn's need for ``(C, H, W)`` samples,
    with the shape it got and what to use instead."""
    with pytest.raises(ConfigError) as caught:
        build_model("resnet", 6, 3)
    assert str(caught.value) == "model='resnet' is unknown; choose one of mlp, linear, cnn"
    with pytest.raises(ConfigError) as caught:
        build_model("cnn", 30, 3)
    assert str(caught.value) == (
        "model=cnn needs an image data set (digits, fashion_mnist) whose samples have shape "
        "(C, H, W), got (30,); use model=mlp for tabular data"
    )


def test_a_linearisation_consumes_and_counts_one_batch_per_agent() -> None:
    """Like :meth:`Oracle.grad`: every agent by default, only ``local`` when given; the
    meter counts the samples drawn, the streams move on by one batch."""
    problem = least_squares_problem(regression_data(60, 3))
    oracle = problem.oracle(iid_shards(60, 3), range(3), batch_size=4, seed=0)
    x = problem.initial_params(0).expand(3, -1)
    oracle.linearize(x)
    oracle.linearize(x[1:2], torch.tensor([1]))
    assert oracle.meter.reset().tolist() == [4, 8, 4]
    assert oracle.drawn.tolist() == [1, 2, 1]


def dropout_problem(execution: Execution | None = None) -> Problem:
    """A batched model with dropout: the compiled kernel takes each agent's key."""
    torch.manual_seed(0)
    return sequential_problem(
        nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3), execution=execution
    )


@pytest.mark.parametrize("model", ["mlp", "dropout", "batchnorm"])
def test_the_functions_compile_would_compile_give_the_eager_numbers(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``compile=true`` with ``torch.compile`` replaced by the identity: the functions it
    would compile (``grad_and_value`` of the batched model's summed loss, the vmapped
    gradient with buffers) give the eager oracle's losses, gradients and buffers, for
    every agent and for a subset. The compiler itself is tested in test_compile.py."""
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    make = {"mlp": classification_problem, "dropout": dropout_problem}.get(model, stateful_problem)
    problem = make()
    shards = iid_shards(90, 3)
    x = problem.initial_params(0) + 0.1 * torch.randn(
        3, problem.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    eager = problem.oracle(shards, range(3), batch_size=4, seed=5)
    compiling = make(execution=Execution(compile=True))
    compiled = compiling.oracle(shards, range(3), batch_size=4, seed=5)
    assert (compiled.problem.batched is None) == (model == "batchnorm")
    for local in (None, torch.tensor([2, 0])):
        rows = x if local is None else x[local]
        for got, expected in zip(compiled.grad(rows, local), eager.grad(rows, local), strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        for name, value in eager.buffers.items():
            torch.testing.assert_close(compiled.buffers[name], value, rtol=0, atol=1e-12)
    kernel = compiled._compiled_vmap if model == "batchnorm" else compiled._compiled_batched
    assert kernel.compiled is not None and kernel.failed is None


@pytest.mark.parametrize("batch_size", [4, 0])
@pytest.mark.parametrize("layer", ["dropout", "batchnorm", "convolution"])
def test_the_oracles_state_lives_on_the_datas_device(layer: str, batch_size: int) -> None:
    """Training data on the ``meta`` device (shapes without storage): the counters, keys,
    weights, buffers and results of every call are there too, for all agents, a subset,
    in chunks of 2 over 3 agents; a tensor left on the CPU would make an operation fail
    (the convolution: the batched model's images, pooling and their gradients)."""
    gen = torch.Generator().manual_seed(0)
    shape = (1, 4, 4) if layer == "convolution" else (3,)
    x, y = torch.randn(12, *shape, generator=gen), torch.randint(0, 2, (12,), generator=gen)
    data = Dataset("v", x, y, x, y, n_classes=2)
    object.__setattr__(data, "x_train", x.to("meta"))  # past the data set's value checks
    object.__setattr__(data, "y_train", y.to("meta"))
    if layer == "convolution":
        net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(8, 2)).to("meta")  # fmt: skip
    else:
        middle = nn.Dropout(0.5) if layer == "dropout" else nn.BatchNorm1d(4)
        net = nn.Sequential(nn.Linear(3, 4), middle, nn.Linear(4, 2)).to("meta")
    problem = Problem(net, get_loss("auto"), Regularizer("l2", 0.1), data,
                      execution=Execution(chunk_agents=2))  # fmt: skip
    shards = [torch.arange(0, 6), torch.arange(6, 12), torch.arange(12)]
    oracle = problem.oracle(shards, range(3), batch_size=batch_size, seed=0)
    meta = torch.device("meta")
    state = [oracle.keys, oracle.drawn, *oracle.buffers.values()]
    for local in (None, torch.tensor([2, 0])):
        k = 3 if local is None else 2
        loss, g = oracle.grad(torch.zeros(k, problem.dim, device=meta), local)
        assert (loss.shape, g.shape) == ((k,), (k, problem.dim))
        assert {t.device for t in (loss, g, *state, *oracle._sample(local))} == {meta}
    assert (layer == "batchnorm") == bool(oracle.buffers)
    assert (problem.batched is None) == (layer == "batchnorm")


# --------------------------------------------------------------- the oracle's own details


def test_agent_seeds_are_numpys_seed_sequence_words() -> None:
    """The first 64-bit word of ``SeedSequence([seed, agent, stream])``, top 63 bits;
    stream 0 (the mini-batches) by default, the dropout stream apart from it."""
    for seed, agent, stream in [(0, 0, 0), (7, 3, 0), (7, 3, DROPOUT_STREAM), (2**40, 9, 5)]:
        word = np.random.SeedSequence([seed, agent, stream]).generate_state(4, np.uint64)[0]
        assert agent_seed(seed, agent, stream) == int(word) >> 1 < 2**63
    assert agent_seed(7, 3) == agent_seed(7, 3, 0) != agent_seed(7, 3, DROPOUT_STREAM)


def test_a_batch_is_splitmix64_of_the_agents_key_at_its_position() -> None:
    """Position ``b`` of agent ``i``'s ``k``-th batch is sample ``u mod |shard_i|`` of its
    shard, ``u`` SplitMix64's output ``k * B + b`` from ``agent_seed(seed, i)`` (the
    module's "Sampling"), over three batches of agents with shards of unequal sizes;
    every weight is ``1 / B`` in the data's dtype."""
    problem = least_squares_problem(regression_data())
    shards, B = shuffled_shards([17, 40, 23]), 6
    oracle = problem.oracle(shards, [4, 1, 9], batch_size=B, seed=7)
    for k in range(3):
        idx, w = oracle._sample(None) if k != 1 else oracle._sample(torch.tensor([0, 1, 2]))
        for j, (agent, shard) in enumerate(zip([4, 1, 9], shards, strict=True)):
            key = agent_seed(7, agent)
            expected = [shard[splitmix64_53(key, k * B + b) % len(shard)] for b in range(B)]
            assert torch.cat(shards)[idx[j]].tolist() == torch.stack(expected).tolist()
        assert w.dtype == torch.float64
        assert torch.equal(w, torch.full((3, B), 1 / B, dtype=torch.float64))


def test_full_batch_weights_are_one_over_each_shards_size() -> None:
    """``batch_size=0``: each agent's whole shard, padded to the largest, weights ``1/|shard|``
    on real samples and 0 on the padding, in the data's dtype, the same every call."""
    problem = least_squares_problem(regression_data())
    shards = shuffled_shards([3, 5])
    oracle = problem.oracle(shards, [0, 1], batch_size=0, seed=7)
    for local in (None, torch.tensor([1, 0]), None):
        idx, w = oracle._sample(local)
        order = [0, 1] if local is None else [1, 0]
        assert w.dtype == torch.float64
        for row, j in enumerate(order):
            n = len(shards[j])
            assert w[row].tolist() == [1 / n] * n + [0.0] * (5 - n)
            assert torch.cat(shards)[idx[row, :n]].tolist() == shards[j].tolist()
    assert oracle.drawn.tolist() == [0, 0]  # the full batch has no stream to move on


def test_the_meter_adds_each_calls_samples() -> None:
    problem = least_squares_problem(regression_data())
    oracle = problem.oracle(shuffled_shards([17, 40, 23]), range(3), batch_size=4, seed=0)
    x = problem.initial_params(0).expand(3, -1)
    oracle.grad(x)
    oracle.grad(x)
    oracle.grad(x[[2, 0]], torch.tensor([2, 0]))
    oracle.grad(x[[2]], torch.tensor([2]))
    assert oracle.meter.reset().tolist() == [12, 8, 16]


def test_the_oracles_settings_reach_it_and_bad_ones_are_refused() -> None:
    """``with_regularizer`` (default on) and ``compile`` (default the problem's) are passed
    through; shards and agents must match, the batch size must be >= 0."""
    problem = classification_problem()
    shards = iid_shards(90, 3)
    assert Oracle(problem, shards, range(3), 4, 0).with_regularizer
    assert not problem.oracle(shards, range(3), batch_size=4, seed=0).compile
    off = problem.oracle(shards, range(3), batch_size=4, seed=0, with_regularizer=False)
    x = torch.zeros(3, problem.dim, dtype=torch.float64) + 0.5
    with_reg = problem.oracle(shards, range(3), batch_size=4, seed=0).grad(x)
    without = off.grad(x)
    torch.testing.assert_close(with_reg[0] - without[0], problem.regularizer.value(x))
    assert problem.oracle(shards, range(3), batch_size=4, seed=0, compile=True).compile
    compiling = classification_problem(execution=Execution(compile=True))
    assert not Oracle(compiling, shards, range(3), 4, 0, compile=False).compile
    with pytest.raises(ValueError, match=r"^2 shards for 3 agents$"):
        Oracle(problem, shards[:2], range(3), 4, 0)
    with pytest.raises(
        ConfigError, match=re.escape("batch_size must be >= 0 (0 = full local batch), got -1")
    ):
        Oracle(problem, shards, range(3), -1, 0)
    with pytest.raises(ConfigError, match=r"^buffers='own' is unknown; choose one of mix, local$"):
        Problem(problem.model, problem.loss, problem.regularizer, problem.data, "own")


def test_dropout_keys_come_from_each_agents_own_seeded_stream() -> None:
    """Agent ``a``'s dropout generator is seeded with ``agent_seed(seed, a, DROPOUT_STREAM)``:
    apart from its mini-batch key, and different for another run seed."""
    problem = stateful_problem()
    oracle = problem.oracle(iid_shards(90, 3), [5, 0, 2], batch_size=4, seed=3)
    seeds = [g.initial_seed() for g in oracle.dropout_generators]
    assert seeds == [agent_seed(3, a, DROPOUT_STREAM) for a in (5, 0, 2)]
    assert not set(seeds) & set(oracle.keys.tolist())
    keys = oracle._keys(torch.tensor([2, 0]))
    assert keys.dtype == torch.int64 and keys.shape == (2,)
    again = problem.oracle(iid_shards(90, 3), [5, 0, 2], batch_size=4, seed=3)
    assert torch.equal(again._keys(torch.tensor([2, 0])), keys)


def test_a_keyed_forward_pass_leaves_the_dropout_layers_unkeyed() -> None:
    """The key reaches every dropout layer for one call only: afterwards each layer is
    back to torch's global generator (``key is None``), also when the call fails."""
    problem = stateful_problem()
    x, inputs = problem.initial_params(0), problem.data.x_train[:4]
    with training(problem.model):
        problem.forward(x, inputs, key=torch.tensor(5))
        assert [layer.key for layer in problem.dropouts] == [None]
        with pytest.raises(RuntimeError):
            problem.forward(x, inputs[:, :, :2], key=torch.tensor(5))  # wrong feature shape
    assert [layer.key for layer in problem.dropouts] == [None]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_run_starts_from_the_same_parameters_on_every_device() -> None:
    """The initialisation draws on the CPU's generator whatever the model's device: the
    same ``x0`` on the GPU as on the CPU, BatchNorm's statistics reset there too, and the
    GPU's own generator left as it was."""
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    data = Dataset("toy", x, y, x[:10], y[:10], n_classes=3)
    cpu = Problem(net, get_loss("cross_entropy"), Regularizer(), data)
    x0 = cpu.initial_params(5)
    gpu_net = net.to("cuda")
    with torch.no_grad():
        gpu_net[1].running_mean.fill_(7.0)  # statistics a re-initialisation must reset
    on_cuda = {k: getattr(data, k).to("cuda") for k in ("x_train", "y_train", "x_test", "y_test")}
    gpu = Problem(
        gpu_net, get_loss("cross_entropy"), Regularizer(), Dataset("toy", **on_cuda, n_classes=3)
    )
    state = torch.cuda.get_rng_state()
    x0_gpu = gpu.initial_params(5)
    assert x0_gpu.device.type == "cuda"
    torch.testing.assert_close(x0_gpu.cpu(), x0, rtol=0, atol=0)
    assert float(gpu_net[1].running_mean.abs().max()) == 0.0
    assert torch.equal(torch.cuda.get_rng_state(), state)


class Tied(nn.Module):
    """An MLP whose two layers share one weight matrix (a parameter in two modules)."""

    def __init__(self) -> None:
        super().__init__()
        self.flat, self.a, self.b = nn.Flatten(), nn.Linear(16, 16), nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.b(torch.relu(self.a(self.flat(x))))))


@pytest.mark.parametrize("model", ["mlp", "cnn", "dropout", "tied"])
def test_one_agent_by_its_own_module_is_the_stacks_row(model: str) -> None:
    """A process of one agent runs the model itself (parameters viewing one flat
    buffer), or the batched kernel where its backward pass is written out (a perceptron):
    its loss and gradient are the agent's row of a stack of three, dropout masks
    included, its buffer and dropout layers its own; a parameter shared by two modules
    has one place in the flat vector, so that model runs through ``functional_call``."""
    if model == "tied":
        base = classification_problem()
        problem = Problem(Tied().double(), base.loss, base.regularizer, base.data)
    elif model == "dropout":
        problem = dropout_problem()
    else:
        problem = classification_problem(model)
    shards = iid_shards(90, 3)
    stack = problem.oracle(shards, [0, 1, 2], batch_size=6, seed=4)
    one = problem.oracle(shards[1:2], [1], batch_size=6, seed=4)
    kernel = {"mlp": one._batched_grad, "dropout": one._batched_grad, "cnn": one._module_grad}
    assert one._kernel(1) == kernel.get(model, one._single_grad)
    assert stack._kernel(3) != stack._module_grad
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, problem.dim, generator=gen, dtype=torch.float64) * 0.3
    for _ in range(2):  # a second batch (and dropout key) too
        loss, g = stack.grad(x)
        loss1, g1 = one.grad(x[1:2])
        torch.testing.assert_close(loss1, loss[1:2], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g1, g[1:2], rtol=1e-12, atol=1e-12)
        x = x - 0.5 * g
    if model != "tied":
        own = one._own
        assert own is not None and own.flat.data_ptr() != x.data_ptr()
        template = problem.model.parameters()
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(own.params, template, strict=True))
        assert [m.key for m in problem.dropouts] == [None] * len(problem.dropouts)
