"""Placements and halo plans of the distributed engine, checked without processes: each
process's plan applied to its rows and the rows it would receive equals its rows of
``W @ x``, and what each process sends is what the others expect."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from nettrain.compression import build_compressor
from nettrain.compression.payloads import cat_rows, pack, take_rows, unpack
from nettrain.engines.coded import decode_mix
from nettrain.engines.distributed.halo import Halo
from nettrain.engines.distributed.placement import Placement
from nettrain.errors import ConfigError
from nettrain.topology.weights import mixing_matrix


def test_blocks_strided_and_given_placements() -> None:
    assert Placement.parse("blocks", 10, 4).groups == ((0, 1, 2), (3, 4, 5), (6, 7), (8, 9))
    assert Placement.parse("strided", 5, 2).groups == ((0, 2, 4), (1, 3))
    given = Placement.parse("4-5, 0; 1-3", 6, 2)
    assert given.groups == ((0, 4, 5), (1, 2, 3))
    assert given.owner.tolist() == [0, 1, 1, 1, 0, 0]
    assert given.order[given.position].tolist() == list(range(6))


@pytest.mark.parametrize(
    ("spec", "processes", "message"),
    [
        ("blocks", 7, "7 processes for 6 agents"),
        ("0-2;3-4", 2, r"missing \[5\]"),
        ("0-3;3-5", 2, r"repeated \[3\]"),
        ("0-2;3-6", 2, r"out of range \[6\]"),
        ("0-5", 2, "gives 1 processes' agents, but 2"),
        ("0-2;x", 2, "comma-separated ids"),
    ],
)
def test_a_placement_that_does_not_hold_every_agent_once_is_refused(
    spec: str, processes: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Placement.parse(spec, 6, processes)


def _plans(W: torch.Tensor, placement: Placement) -> list[Halo]:
    return [
        Halo.of(W, placement, r, torch.device("cpu"), torch.float64)
        for r in range(placement.processes)
    ]


def _received(plans: list[Halo], x: torch.Tensor, placement: Placement, r: int) -> torch.Tensor:
    """What process ``r`` receives: from each process ``q`` (ascending), the rows ``q``
    sends it, taken from ``q``'s own stack."""
    parts = []
    for q in plans[r].recv:
        sent = plans[q].send[r]
        assert len(sent) == plans[r].recv[q]  # what q sends is what r expects
        parts.append(x[list(placement.groups[q])][sent])
    return torch.cat(parts) if parts else x[:0]


GRAPHS = {
    "ring": nx.cycle_graph(24),
    "torus": nx.convert_node_labels_to_integers(nx.grid_2d_graph(4, 6, periodic=True)),
    "random": nx.connected_watts_strogatz_graph(24, 4, 0.5, seed=3),
    "complete": nx.complete_graph(24),
}


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("spec", ["blocks", "strided", "0-4,20-23;5-6;7-19"])
def test_each_process_computes_its_rows_of_the_mix(graph: str, spec: str) -> None:
    W = mixing_matrix(GRAPHS[graph], "metropolis", sparse=True)
    processes = 3 if ";" in spec else 4
    placement = Placement.parse(spec, 24, processes)
    x = torch.randn(24, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plans = _plans(W, placement)
    expected = W.to_dense() @ x
    degree = (W.to_dense() != 0).sum(0) - 1  # messages of agent j: its out-neighbours
    for r, plan in enumerate(plans):
        mine = list(placement.groups[r])
        got = plan.combine(x[mine], _received(plans, x, placement, r))
        torch.testing.assert_close(got, expected[mine], rtol=0, atol=1e-12)
        assert plan.sends.tolist() == degree[mine].tolist()


def test_a_ring_in_blocks_sends_one_row_to_each_neighbouring_process() -> None:
    W = mixing_matrix(nx.cycle_graph(64), "metropolis", sparse=True)
    plans = _plans(W, Placement.parse("blocks", 64, 4))
    for r, plan in enumerate(plans):
        assert sorted(plan.send) == sorted({(r - 1) % 4, (r + 1) % 4})
        assert all(len(rows) == 1 for rows in plan.send.values())
        assert plan.local.kind == "diagonals"  # the block is still a banded kernel


def test_one_process_holds_the_simulators_kernel() -> None:
    W = mixing_matrix(nx.cycle_graph(16), "metropolis", sparse=True)
    (plan,) = _plans(W, Placement.parse("blocks", 16, 1))
    assert plan.send == {} and plan.recv == {}
    x = torch.randn(16, 3, dtype=torch.float64)
    torch.testing.assert_close(plan.combine(x, x[:0]), W.to_dense() @ x, rtol=0, atol=1e-12)


def test_a_compressed_mix_decodes_each_received_row_against_the_receiver() -> None:
    """The lattice quantiser decodes against the receiver's own row: each process, from
    its payload and the payload rows it receives, gets its rows of the one-process
    result."""
    W = mixing_matrix(GRAPHS["random"], "metropolis", sparse=True)
    placement = Placement.parse("strided", 24, 3)
    plans = _plans(W, placement)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(24, 8, dtype=torch.float64, generator=gen)
    compressor = build_compressor("lattice", bits=8, eps=1e-3)
    (everyone,) = _plans(W, Placement.parse("blocks", 24, 1))
    whole = decode_mix(x, compressor.encode(x), compressor, everyone.edges, everyone.diagonal)
    for r, plan in enumerate(plans):
        mine = list(placement.groups[r])
        payload = compressor.encode(x[mine])
        received = []
        for q in plan.recv:
            theirs = compressor.encode(x[list(placement.groups[q])])
            sent = pack(take_rows(theirs, plans[q].send[r]))  # as it travels
            like = take_rows(payload, torch.zeros(plan.recv[q], dtype=torch.int64))
            received.append(unpack(sent, like))
        got = decode_mix(
            x[mine], cat_rows([payload, *received]), compressor, plan.edges, plan.diagonal
        )
        torch.testing.assert_close(got, whole[mine], rtol=0, atol=1e-12)
