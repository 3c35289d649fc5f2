"""``Communicator.local_rows``: global agent ids to rows of the local stack, as a process
holding some of the agents sees them."""

from __future__ import annotations

import pytest
import torch

from nettrain.engines.sim.comm import SimCommunicator
from nettrain.topology import build_topology


def comm_holding(agents: list[int]) -> SimCommunicator:
    comm = SimCommunicator(build_topology("ring", 6), torch.device("cpu"), torch.float32)
    comm.agents = torch.tensor(agents)  # as if this process held only these, in this order
    return comm


def test_rows_follow_the_order_of_the_ids_and_of_the_stack() -> None:
    comm = comm_holding([4, 1, 2])
    assert comm.local_rows(torch.tensor([2, 4, 1, 2])).tolist() == [2, 0, 1, 2]
    assert comm_holding(list(range(6))).local_rows(torch.tensor([5, 0])).tolist() == [5, 0]


def test_an_agent_held_elsewhere_is_left_out_or_refused() -> None:
    comm = comm_holding([4, 1])
    assert comm.local_rows(torch.tensor([3, 1, 0, 4]), held_only=True).tolist() == [1, 0]
    assert comm.local_rows(torch.tensor([3]), held_only=True).dtype == torch.int64
    with pytest.raises(ValueError, match=r"agents \[3\] are not held here"):
        comm.local_rows(torch.tensor([1, 3]))
