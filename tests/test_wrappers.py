"""Communicators that wrap communicators: compression, its code streams and byte counts,
error feedback's residual."""

from __future__ import annotations

import pytest
import torch

from nettrain.compression import QSGD, HalfPrecision, Identity, Lattice, TopK
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.errors import ConfigError
from nettrain.patterns import Codec, Losses
from nettrain.problem.oracle import agent_seed
from nettrain.topology import build_topology
from nettrain.wrappers import Compressed, ErrorFeedback, Lossy, losing

N, D = 6, 40
CPU = torch.device("cpu")


def ring() -> SimCommunicator:
    return SimCommunicator(build_topology("ring", N), CPU, torch.float64)


def points(seed: int = 0, spread: float = 1.0) -> torch.Tensor:
    return spread * torch.randn(
        N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


def test_compressed_counts_the_payloads_bytes() -> None:
    """A ring mix at 8 bits: two messages an agent of ``d`` bytes each; an fp16 mean: an
    all-gather of ``n - 1`` payloads of ``2 d`` bytes."""
    comm = ring()
    x = points(spread=0.01)
    Compressed(comm, Lattice.with_bits(8, eps=1e-3)).mix(x, 0)
    messages, nbytes, _ = comm.traffic.reset()
    assert messages.tolist() == [2] * N and nbytes.tolist() == [2 * D] * N
    Compressed(comm, HalfPrecision()).mean(x)
    messages, nbytes, _ = comm.traffic.reset()
    assert messages.tolist() == [N - 1] * N and nbytes.tolist() == [(N - 1) * 2 * D] * N


def test_compressed_through_identity_is_the_plain_communicator() -> None:
    comm = ring()
    x = points()
    plain = comm.mix(x, 0), comm.traffic.reset()
    same = Compressed(comm, Identity()).mix(x, 0), comm.traffic.reset()
    assert torch.equal(plain[0], same[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], same[1], strict=True))


def test_the_codes_are_a_function_of_seed_round_and_exchange() -> None:
    """The same round's view draws the same codes; another round, another exchange of the
    round or another seed draws others; a round has four code streams."""
    x = points()
    qsgd = Compressed(ring(), QSGD(bits=2), seed=1)

    def mean(comm) -> torch.Tensor:
        return comm.mean(x)

    first = mean(qsgd.at(3))
    assert torch.equal(first, mean(qsgd.at(3)))
    assert not torch.equal(first, mean(qsgd.at(4)))
    assert not torch.equal(first, mean(Compressed(ring(), QSGD(bits=2), seed=2).at(3)))
    view = qsgd.at(3)
    assert torch.equal(view.mean(x), first)
    assert not torch.equal(view.mean(x), first)  # the round's second exchange
    view.mean(x), view.mean(x)
    with pytest.raises(ConfigError, match="at most 4 compressed exchanges"):
        view.mean(x)


@pytest.mark.parametrize("compressor", [TopK(k=3), QSGD(bits=2)])
def test_error_feedback_sends_x_plus_residual_and_keeps_what_it_dropped(compressor) -> None:
    """Each round ``decode(p_i) + e_new == x_i + e_old``: the mean every agent receives
    is ``(1/n) sum_i (x_i + e_old_i - e_new_i)``; the residual is not zero (top-k drops)."""
    ef = ErrorFeedback(Compressed(ring(), compressor, seed=4))
    assert ef.residual is None
    old = torch.zeros(N, D, dtype=torch.float64)
    for t in range(5):
        x = points(seed=t)
        got = ef.at(t).mean(x)
        new = ef.residual
        assert new is not None and new.abs().max() > 1e-3
        expected = (x + old - new).mean(0, keepdim=True).expand_as(x)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        old = new


def test_error_feedback_residual_round_trips_through_its_state() -> None:
    """A fresh wrapper given the state continues exactly as the one it came from."""
    x = points()
    first = ErrorFeedback(Compressed(ring(), TopK(k=3)))
    first.at(0).mean(x)
    second = ErrorFeedback(Compressed(ring(), TopK(k=3)))
    second.load_state_dict(first.state_dict())
    assert torch.equal(first.at(1).mean(x), second.at(1).mean(x))
    assert torch.equal(first.residual, second.residual)


def test_error_feedback_takes_one_compressed_exchange_a_round() -> None:
    view = ErrorFeedback(Compressed(ring(), TopK(k=3))).at(0)
    view.mean(points())
    with pytest.raises(ConfigError, match="one compressed exchange a round"):
        view.mix(points(), 0)


@pytest.mark.parametrize("compressor", [HalfPrecision(), Lattice.with_bits(8, eps=1e-3)])
def test_error_feedback_in_slices_is_error_feedback_on_the_whole(compressor) -> None:
    """A columnwise compressor's residual made slice by slice (each slice corrected and
    encoded as it is put, the last columns first) is the whole vector's, and so is the
    mean, over rounds whose residuals carry over; some columns put and the rest left to
    the wait, or nothing put at all, is the whole too."""
    sliced, whole = (ErrorFeedback(Compressed(ring(), compressor)) for _ in range(2))
    cuts = [slice(25, D), slice(10, 25), slice(0, 10)]
    puts = [cuts, cuts, cuts[:1], []]  # round 2: columns 0 to 24 never put; round 3: none
    for t, put in enumerate(puts):
        x = points(seed=t, spread=0.1)
        parts = sliced.at(t).start_mean_parts(x)
        for cols in put:
            parts.put(cols, x[:, cols])
        got = parts.wait(x)
        assert torch.equal(got, whole.at(t).mean(x))
        assert torch.equal(sliced.residual, whole.residual)
        assert sliced.residual.abs().max() > 0  # something was dropped and carried


@pytest.mark.parametrize(
    ("puts", "left"),
    [
        ([], [(0, 10)]),
        ([(0, 10)], []),
        ([(6, 10), (0, 3)], [(3, 6)]),
        ([(2, 4)], [(0, 2), (4, 10)]),
        ([(7, 10), (3, 5)], [(0, 3), (5, 7)]),
    ],
)
def test_never_put_is_the_columns_no_slice_covers(puts, left) -> None:
    from nettrain.patterns import never_put

    got = never_put([slice(*p) for p in puts], 10)
    assert [(c.start, c.stop) for c in got] == left


def test_lossy_loses_what_the_fault_spec_says() -> None:
    """Three swaps: kept, request lost, reply lost. A lost request changes neither side
    and sends no reply; a lost reply leaves the initiator with its reference while the
    partner takes the request in. Without a loss the wrapper is not used at all."""
    comm = ring()
    x, ref = points(seed=1), points(seed=2)
    pairs = torch.tensor([[0, 1], [2, 3], [4, 5]])
    losses = Losses(torch.tensor([False, True, False]), torch.tensor([False, True, True]))
    got = Lossy(comm, losses).swap(x, pairs, ref)
    assert torch.equal(got[0], x[1]) and torch.equal(got[1], x[0])  # kept
    assert torch.equal(got[2], ref[2]) and torch.equal(got[3], ref[3])  # request lost
    assert torch.equal(got[4], ref[4]) and torch.equal(got[5], x[4])  # reply lost
    assert comm.traffic.reset()[0].tolist() == [1, 1, 1, 0, 1, 1]  # no reply to no request
    nothing = Losses(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool))
    assert losing(comm, nothing) is comm
    assert isinstance(losing(comm, losses), Lossy)


def test_exchange_k_of_round_t_draws_from_the_documented_stream() -> None:
    """Codes of exchange ``k`` of round ``t``: a generator seeded by ``agent_seed(seed,
    first local agent, 2^32 + 4 t + k)`` (what a resumed run redraws)."""
    x = points()
    view = Compressed(ring(), QSGD(bits=2), seed=9).at(5)
    for k in range(2):
        codes = torch.Generator().manual_seed(agent_seed(9, 0, (1 << 32) + 4 * 5 + k))
        want = ring().start_mean(x, codec=Codec(QSGD(bits=2), codes)).wait()
        assert torch.equal(view.mean(x), want)
