"""A server's slice of the centre (:class:`CentreShard`), on values worked out by hand.

The elastic rule with ``alpha = 1/2`` or ``1/4`` on small whole numbers keeps every value
exact in float64, so replies, centres and staleness are compared with ``==``.
"""

from __future__ import annotations

import re

import pytest
import torch

from nettrain.algorithms import EASGD, EASGDAsync, MomentumDownpour
from nettrain.engines.centre import CentreShard, shard_rows


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def shard(rule, start: torch.Tensor, workers: int) -> CentreShard:
    return CentreShard(rule, shard_rows(start, rule, slice(0, start.numel())), workers, 5.0)


def test_starting_rows_hold_the_slice_in_row_0_and_zeros_below() -> None:
    rule = MomentumDownpour(lr=0.1, momentum=0.5)  # the centre and its velocity
    rows = shard_rows(f64(1, 2, 3, 4, 5), rule, slice(1, 4))
    assert torch.equal(rows, torch.tensor([[2.0, 3.0, 4.0], [0.0, 0.0, 0.0]], dtype=torch.float64))


def test_asynchronous_exchanges_of_one_process_are_applied_in_order() -> None:
    """``x~ <- x~ + alpha (x_i - x~)``, reply the centre found: with ``alpha = 1/2`` from
    ``x~ = 0``, worker 2 sends 8 (reply 0, centre 4), then worker 0 sends 0 (reply 4,
    centre 2); worker 2 again sends 2 (reply 2, centre 2). Staleness: exchanges applied
    since the worker's previous one, 0 at a worker's first."""
    centre = shard(EASGDAsync(lr=0.1, alpha=0.5), f64(0, 0), 3)
    first = centre.exchange_rows([2, 0], None, torch.stack([f64(8, 8), f64(0, 0)]))
    assert [(reply.tolist(), stale) for reply, stale in first] == [([0, 0], 0), ([4, 4], 1)]
    [(reply, stale)] = centre.exchange_rows([2], None, f64(2, 2)[None])
    assert (reply.tolist(), stale) == ([2, 2], 1)  # worker 0's exchange came between
    assert torch.equal(centre.centre(), f64(2, 2))
    assert centre.counts() == {2: 2, 0: 1}


def test_synchronous_exchanges_of_one_process_read_the_round_as_it_began() -> None:
    """Both workers of round 0 read ``x~ = 4`` and their changes add up:
    ``x~ = 4 + (0 - 4) / 4 + (8 - 4) / 4 = 4``; round 1 then reads 4 again, from
    ``x~ = 4 + (0 - 4) / 4 + (0 - 4) / 4 = 2``."""
    centre = shard(EASGD(lr=0.1, alpha=0.25), f64(4), 2)
    replies = centre.exchange_rows([0, 1], 0, torch.stack([f64(0), f64(8)]))
    assert [(r.tolist(), s) for r, s in replies] == [([4], 0), ([4], 1)]
    assert torch.equal(centre.centre(), f64(4))
    replies = centre.exchange_rows([0, 1], 1, torch.stack([f64(0), f64(0)]))
    assert [(r.tolist(), s) for r, s in replies] == [([4], 1), ([4], 1)]
    assert torch.equal(centre.centre(), f64(2)) and centre.sync_round == 2


def test_a_loaded_shard_continues_as_the_saved_one() -> None:
    """A checkpoint of a shard (its rows, version, per-worker versions and counts, round)
    loaded into a fresh one: the next exchanges give the saved shard's replies and
    staleness, and saving copies (later exchanges do not change what was saved)."""
    rule = EASGD(lr=0.1, alpha=0.5)
    saved = shard(rule, f64(0, 0), 2)
    saved.exchange_rows([0, 1], 0, torch.stack([f64(4, 0), f64(0, 4)]))
    state = saved.state_dict()
    assert state["version"] == 2 and state["seen"] == [1, 2] and state["applied"] == {0: 1, 1: 1}
    assert state["sync_round"] == 1 and torch.equal(state["rows"], f64(2, 2)[None])
    saved.exchange_rows([0, 1], 1, torch.stack([f64(0, 0), f64(0, 0)]))
    assert torch.equal(state["rows"], f64(2, 2)[None])  # a copy, not the live rows

    loaded = shard(rule, f64(-1, -1), 2)
    loaded.load_state_dict(state)
    state["rows"][0, 0] = 100.0  # loading copies too
    assert torch.equal(loaded.centre(), f64(2, 2))  # as the last complete round left it
    assert loaded.counts() == {0: 1, 1: 1}
    again = loaded.exchange_rows([1, 0], 1, torch.stack([f64(8, 8), f64(0, 0)]))
    assert [(r.tolist(), s) for r, s in again] == [([2, 2], 0), ([2, 2], 2)]
    assert torch.equal(loaded.centre(), f64(4, 4))  # 2 + (8 - 2) / 2 + (0 - 2) / 2


def test_a_round_read_while_it_fills_is_the_centre_it_began_with() -> None:
    """Worker 0's exchange of round 0 is in, worker 1's not yet: the centre read is still
    ``x~ = 4`` (a record between rounds), then ``4 + (8 - 4) / 2 + (6 - 4) / 2 = 7``."""
    centre = shard(EASGD(lr=0.1, alpha=0.5), f64(4), 2)
    centre.exchange_sync(0, 0, f64(8))
    assert torch.equal(centre.centre(), f64(4))
    centre.exchange_sync(1, 0, f64(6))
    assert torch.equal(centre.centre(), f64(7))


def test_a_worker_a_round_ahead_waits_then_says_for_whom() -> None:
    centre = CentreShard(EASGD(lr=0.1, alpha=0.5), f64(0)[None], 2, 0.05)
    centre.exchange_sync(0, 0, f64(1))
    message = "worker 0 waited 0.05 s at round 1 for the other workers' exchanges of round 0"
    with pytest.raises(TimeoutError, match=f"^{re.escape(message)}$"):
        centre.exchange_sync(0, 1, f64(1))
    assert not centre.finished.is_set()
    centre.finish()
    assert centre.finished.is_set()


@pytest.mark.parametrize("round", [None, 0])
def test_a_worker_list_and_rows_of_different_lengths_are_refused(round) -> None:
    centre = shard(EASGD(lr=0.1, alpha=0.5), f64(0), 2)
    with pytest.raises(ValueError, match="zip"):
        centre.exchange_rows([0, 1], round, f64(1)[None])


def test_an_exchange_sent_again_is_applied_once() -> None:
    """A worker that resends its exchange number ``seq`` (its reply was lost) gets None
    and leaves the centre as it was; a later number, or another worker's, is applied."""
    centre = shard(EASGDAsync(lr=0.1, alpha=0.5), f64(0), 2)
    [(reply, stale)] = centre.exchange_rows([0], None, f64(8)[None], seq=0)
    assert (reply.tolist(), stale) == ([0], 0) and torch.equal(centre.centre(), f64(4))
    assert centre.exchange_rows([0], None, f64(8)[None], seq=0) == [None]
    assert torch.equal(centre.centre(), f64(4)) and centre.counts() == {0: 1}
    [(reply, stale)] = centre.exchange_rows([1], None, f64(0)[None], seq=0)
    assert (reply.tolist(), stale) == ([4], 1) and torch.equal(centre.centre(), f64(2))
    [(reply, _)] = centre.exchange_rows([0], None, f64(6)[None], seq=1)
    assert reply.tolist() == [2] and torch.equal(centre.centre(), f64(4))


def test_a_loaded_shard_still_knows_which_exchanges_it_applied() -> None:
    centre = shard(EASGDAsync(lr=0.1, alpha=0.5), f64(0), 2)
    centre.exchange_rows([0, 1], None, torch.stack([f64(8), f64(4)]), seq=3)
    state = centre.state_dict()
    assert state["last"] == {0: 3, 1: 3}
    loaded = shard(EASGDAsync(lr=0.1, alpha=0.5), f64(0), 2)
    loaded.load_state_dict(state)
    assert loaded.exchange_rows([1], None, f64(4)[None], seq=3) == [None]  # applied before
    assert loaded.exchange_rows([1], None, f64(4)[None], seq=4) != [None]
    older = {k: v for k, v in state.items() if k != "last"}  # a checkpoint without it
    fresh = shard(EASGDAsync(lr=0.1, alpha=0.5), f64(0), 2)
    fresh.load_state_dict(older)
    assert fresh.exchange_rows([1], None, f64(4)[None], seq=0) != [None]
