"""The oracle over agents in chunks: the same numbers as one pass, and a memory budget
that sizes the chunks."""

from __future__ import annotations

import dataclasses
import io
import re

import pytest
import torch
from torch import nn

from nettrain.data import Dataset
from nettrain.errors import ConfigError
from nettrain.problem.execution import Execution
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.oracle import Problem


def data() -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(80, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (80,), generator=gen)
    return Dataset("images", x, y, x[:20], y[:20], n_classes=3)


MODELS = {
    "batched (mlp with dropout)": lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)
    ),
    "vmapped (batchnorm)": lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32, 3),
    ),
}


def oracle(model: str, execution: Execution, agents: int = 8, regular: bool = True):
    net = MODELS[model]().double()
    regularizer = Regularizer("l2", 0.01) if regular else Regularizer()
    problem = Problem(net, get_loss("auto"), regularizer, data(), execution=execution)
    shards = [torch.arange(i, 80, agents) for i in range(agents)]
    return problem.oracle(shards, range(agents), batch_size=4, seed=2)


@pytest.mark.parametrize("model", MODELS)
def test_chunks_give_the_numbers_of_one_pass_bit_for_bit(model: str) -> None:
    """float64 on the CPU: losses, gradients and buffers equal, over three rounds and a
    subset of agents (chunks of 3 over 8 agents, and of 1)."""
    whole = oracle(model, Execution(chunk_agents=8))
    parts = [oracle(model, Execution(chunk_agents=c)) for c in (3, 1)]
    assert (whole.chunk, parts[0].chunk, parts[1].chunk) == (8, 3, 1)
    x = torch.randn(8, whole.problem.dim, generator=torch.Generator().manual_seed(1)).double()
    for local in (None, None, torch.tensor([6, 1, 4, 0, 7])):
        k = x if local is None else x[local]
        expected = whole.grad(k, local)
        for o in parts:
            got = o.grad(k, local)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
            for name, b in whole.buffers.items():
                assert torch.equal(o.buffers[name], b)


@pytest.mark.parametrize("chunk", [8, 3])
@pytest.mark.parametrize("regular", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_descend_steps_in_place_with_the_numbers_of_grad_then_step(
    model: str, regular: bool, chunk: int, monkeypatch
) -> None:
    """``descend(x, lr)`` leaves ``x - lr * g`` in ``x`` bit for bit (float64), with the
    losses of ``grad``: the written-out backward pass adding each layer into ``x`` as it
    goes (no regulariser), or the gradient taken then added (a regulariser, or vmap)."""
    from nettrain.problem import oracle as module

    ref = oracle(model, Execution(chunk_agents=chunk), regular=regular)
    stepped = oracle(model, Execution(chunk_agents=chunk), regular=regular)
    x = torch.randn(8, ref.problem.dim, generator=torch.Generator().manual_seed(1)).double()
    lr = 0.3
    written: list[tuple[float | None, list[int]]] = []  # each pass's alpha and destinations
    original = module.losses_and_grads

    def spied(*args, into=None, alpha=None, **kwargs):
        written.append((alpha, [t.untyped_storage().data_ptr() for t in (into or {}).values()]))
        return original(*args, into=into, alpha=alpha, **kwargs)

    monkeypatch.setattr(module, "losses_and_grads", spied)
    adds = stepped._by_hand and not regular  # into x itself, no gradient stack
    for local in (None, None, torch.tensor([6, 1, 4, 0, 7])):
        start = x if local is None else x[local]
        loss, g = ref.grad(start, local)
        expected = torch.add(start, g, alpha=-lr)
        moved = start.clone()
        written.clear()
        assert torch.equal(stepped.descend(moved, lr, local), loss)
        assert torch.equal(moved, expected)
        assert len(written) == (-(-len(start) // chunk) if stepped._by_hand else 0)
        for alpha, into in written:
            assert alpha == (-lr if adds else None)
            assert (set(into) == {moved.untyped_storage().data_ptr()}) == adds
        for name, b in ref.buffers.items():
            assert torch.equal(stepped.buffers[name], b)
        assert torch.equal(stepped.meter.samples, ref.meter.samples)


def test_auto_chunks_fit_the_memory_budget() -> None:
    per_agent = oracle("batched (mlp with dropout)", Execution(chunk_agents=1)).pass_bytes()
    assert per_agent > 0
    for agents in (1, 3, 5):
        budget = Execution(memory_gb=agents * per_agent / 2**30)
        assert oracle("batched (mlp with dropout)", budget).chunk == agents
    assert oracle("batched (mlp with dropout)", Execution(memory_gb=1e-12)).chunk == 1
    assert oracle("batched (mlp with dropout)", Execution()).chunk >= 8  # a quarter of free memory


def test_auto_chunks_of_a_cnn_on_the_cpu_fit_twice_the_last_level_cache(monkeypatch) -> None:
    """With memory to spare, a chunk of a model with convolutions holds as many agents as
    twice the cache takes (at least one), at most ``CONVOLUTION_CHUNK_BYTES``; a machine
    that lists no cache, or a model without convolutions, leaves the memory budget
    alone."""
    from nettrain.problem import oracle as module

    cnn, mlp = "vmapped (batchnorm)", "batched (mlp with dropout)"
    per_agent = oracle(cnn, Execution(chunk_agents=1)).pass_bytes()
    mlp_budget = 2**30 // oracle(mlp, Execution(chunk_agents=1)).pass_bytes()
    for cache, agents in ((2.5 * per_agent, 5), (per_agent, 2), (0.1 * per_agent, 1)):
        monkeypatch.setattr(module, "last_level_cache", lambda c=cache: int(c))
        assert oracle(cnn, Execution(memory_gb=1.0)).chunk == agents
        assert oracle(mlp, Execution(memory_gb=1.0)).chunk == mlp_budget  # no convolution
    monkeypatch.setattr(module, "CONVOLUTION_CHUNK_BYTES", int(3.5 * per_agent))
    monkeypatch.setattr(module, "last_level_cache", lambda: 100 * per_agent)  # a big cache
    assert oracle(cnn, Execution(memory_gb=1.0)).chunk == 3  # at most the fixed bytes
    monkeypatch.setattr(module, "last_level_cache", lambda: 0)
    assert oracle(cnn, Execution(memory_gb=3 * per_agent / 2**30)).chunk == 3


def test_the_last_level_cache_is_the_highest_level_listed(tmp_path) -> None:
    listed = ((0, 1, "48K"), (2, 2, "1024K"), (3, 3, "32768K"), (1, 1, "32K"), (4, 1, "64K"))
    for index, level, size in listed:  # the last index listed is not the last level
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "size").write_text(f"{size}\n")
    from nettrain.problem.execution import last_level_cache

    assert last_level_cache(tmp_path) == 32 * 2**20
    (tmp_path / "index3" / "size").write_text("lots\n")  # unreadable: the next level down
    assert last_level_cache(tmp_path) == 2**20
    (tmp_path / "index3" / "size").write_text("3145728\n")  # bytes, without a unit
    assert last_level_cache(tmp_path) == 3 * 2**20
    (tmp_path / "index0" / "level").unlink()  # an index without a level is passed over
    assert last_level_cache(tmp_path) == 3 * 2**20
    assert last_level_cache(tmp_path / "none") == 0


def test_a_pass_costs_more_with_a_bigger_batch() -> None:
    small = oracle("vmapped (batchnorm)", Execution())
    big = small.problem.oracle(
        [torch.arange(i, 80, 8) for i in range(8)], range(8), batch_size=16, seed=2
    )
    assert big.pass_bytes() > 2 * small.pass_bytes()


@pytest.mark.parametrize(
    "chunk, memory, message",
    [("0", 0.0, "chunk_agents must be auto or a number"), ("some", 0.0, "chunk_agents"),
     ("auto", -1.0, re.escape("memory_gb must be >= 0 (0 = a quarter of free memory), got -1.0"))],
)  # fmt: skip
def test_bad_chunk_settings_are_refused(chunk: str, memory: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Execution.parse(chunk, memory)


def test_compile_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"^compile must be true or false, got 'yes'$"):
        Execution(compile="yes")  # type: ignore[arg-type]


def test_execution_is_only_how_not_what() -> None:
    """The run's settings accept chunk_agents and memory_gb, and a resumed run may change
    them (they are not frozen on resume)."""
    from nettrain.config import FROZEN_ON_RESUME, RunConfig

    cfg = RunConfig.from_keys({"chunk_agents": "64", "memory_gb": 2.5})
    assert (cfg.chunk_agents, cfg.memory_gb) == ("64", 2.5)
    assert not {"chunk_agents", "memory_gb"} & set(FROZEN_ON_RESUME)
    assert dataclasses.replace(Execution.parse("64", 2.5)).chunk_agents == 64


def test_execution_is_parsed_from_the_configs_text() -> None:
    assert Execution.parse(" 12 ", 2.5, compile=True) == Execution(12, 2.5, True)
    assert Execution.parse("auto", 0.0) == Execution("auto", 0.0, False)


MEMINFO = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12345678 kB\n"


def test_free_memory_on_the_cpu_is_the_machines_available_memory(monkeypatch) -> None:
    """``MemAvailable`` of /proc/meminfo in bytes; without it (or without the file), the
    free pages."""
    from nettrain.problem import execution

    def fake_open(text: str | None):
        def opener(path: str):
            assert path == "/proc/meminfo"
            if text is None:
                raise OSError("no such file")
            return io.StringIO(text)

        return opener

    sysconf = {"SC_AVPHYS_PAGES": 3000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(execution.os, "sysconf", sysconf.__getitem__)
    cpu = torch.device("cpu")
    monkeypatch.setattr(execution, "open", fake_open(MEMINFO), raising=False)
    assert execution.free_memory(cpu) == 12345678 * 1024
    for broken in (None, MEMINFO.replace("MemAvailable", "Cached"), "MemAvailable: lots kB\n"):
        monkeypatch.setattr(execution, "open", fake_open(broken), raising=False)
        assert execution.free_memory(cpu) == 3000 * 4096


def test_free_memory_on_cuda_is_the_devices_free_memory(monkeypatch) -> None:
    from nettrain.problem import execution

    cuda = torch.device("cuda", 1)

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        assert device == cuda
        return 777, 1000  # free, total

    monkeypatch.setattr(execution.torch.cuda, "mem_get_info", mem_get_info)
    assert execution.free_memory(cuda) == 777


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("batch_size", [4, 0])
def test_a_pass_costs_three_times_its_saved_activations_plus_the_batch_and_two_rows(
    hidden: bool, batch_size: int
) -> None:
    """float64, squared loss, batch B (4, or the larger shard's 6 for the full batch), inputs
    of 3 features and 2 outputs. Autograd saves the residual (B, 2) and the per-sample losses
    (B,) that the weights multiply; the inputs, views of the batch, and the weights, views of
    the parameters, cost nothing. With a hidden layer of 5 ReLUs it also saves their output
    (B, 5) twice (for the ReLU and as the next layer's input). Then a pass costs 3x that,
    plus the batch (B, 3) and two rows of d."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(9, 2, generator=gen, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)) if hidden else nn.Linear(3, 2)
    data = Dataset("v", x, y, x, y, 0)
    problem = Problem(net.double(), get_loss("squared"), Regularizer("none", 0.0), data)
    shards = [torch.arange(0, 3), torch.arange(3, 9)]
    o = problem.oracle(shards, range(2), batch_size=batch_size, seed=0)
    B, d = batch_size or 6, (3 * 5 + 5 + 5 * 2 + 2) if hidden else (3 * 2 + 2)
    saved = B * 2 + B + (2 * B * 5 if hidden else 0)
    assert o.pass_bytes() == 8 * (3 * saved + B * 3 + 2 * d)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("chunk", (8, 3))
def test_the_loss_and_gradient_are_new_tensors_the_caller_may_overwrite(
    model: str, chunk: int
) -> None:
    """What LocalSGD's step relies on (it writes the new ``x`` into the gradient): what
    the caller writes into a call's results stays there through later calls, and changes
    neither ``x`` nor what the oracle computes next, one agent alone included (its own
    kernel). No regulariser: its gradient, added at the end, would make a new tensor
    whatever the kernel returned."""
    ours, twin = (oracle(model, Execution(chunk_agents=chunk), regular=False) for _ in range(2))
    x = torch.randn(8, ours.problem.dim, generator=torch.Generator().manual_seed(1)).double()
    kept, written = x.clone(), []
    for call, local in enumerate((None, torch.tensor([5]), None, torch.tensor([5]))):
        k = x if local is None else x[local]
        for got, expected in zip(ours.grad(k, local), twin.grad(k, local), strict=True):
            assert torch.equal(got, expected)
            written.append((got.fill_(call), call))
    assert all(bool((got == call).all()) for got, call in written)
    assert torch.equal(x, kept)
    for name, b in twin.buffers.items():
        assert torch.equal(ours.buffers[name], b)
