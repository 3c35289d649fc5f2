"""Error feedback: ``x + e_old == decode(encode(x + e_old)) + e_new`` at every step."""

from __future__ import annotations

import pytest
import torch

from helpers import generator
from nettrain.compression import (
    QSGD,
    EFState,
    ErrorFeedback,
    HalfPrecision,
    Identity,
    Lattice,
    TopK,
    ef_init,
    ef_step,
)
from nettrain.errors import ConfigError

WRAPPED = [TopK(k=3), QSGD(bits=2), HalfPrecision(torch.bfloat16), Lattice.with_bits(8, eps=0.05)]


@pytest.mark.parametrize("comp", WRAPPED, ids=lambda c: c.name)
def test_invariant_holds_at_every_step_and_telescopes(comp):
    g = torch.Generator().manual_seed(0)
    steps = [torch.randn(4, 40, generator=g, dtype=torch.float64) for _ in range(6)]
    ref = torch.zeros(4, 40, dtype=torch.float64)
    state = ef_init(steps[0])
    sent = torch.zeros_like(ref)
    for x in steps:
        old = state.residual
        payload, x_hat, state = ef_step(comp, x, state, ref, generator=g)
        torch.testing.assert_close(x + old, x_hat + state.residual, rtol=0, atol=1e-12)
        torch.testing.assert_close(comp.decode(payload, ref), x_hat, rtol=0, atol=0)
        sent += x_hat
    # nothing is lost but the last residual
    torch.testing.assert_close(sent + state.residual, sum(steps), rtol=0, atol=1e-11)
    assert state.residual.abs().max() > 0  # the compressor did drop something


def test_residual_carries_what_topk_dropped():
    x = torch.tensor([[3.0, -1.0, 0.5, 2.0]])
    ef = ErrorFeedback(TopK(k=1))
    state = ef.init(x)
    _, x_hat, state = ef.step(x, state)
    assert x_hat.tolist() == [[3.0, 0.0, 0.0, 0.0]]
    assert state.residual.tolist() == [[0.0, -1.0, 0.5, 2.0]]
    _, x_hat, state = ef.step(x, state)  # x + e = [3, -2, 1, 4]: the residual's 2 wins now
    assert x_hat.tolist() == [[0.0, 0.0, 0.0, 4.0]]
    assert state.residual.tolist() == [[3.0, -2.0, 1.0, 0.0]]


def test_identity_leaves_no_residual_and_bytes_are_the_inner_ones():
    x = torch.randn(2, 5)
    ef = ErrorFeedback(Identity())
    payload, x_hat, state = ef.step(x, ef.init(x))
    assert torch.equal(x_hat, x)
    assert torch.equal(state.residual, torch.zeros_like(x))
    assert ef.nbytes(payload).tolist() == [20, 20]
    assert ef.name == "ef_none"


def test_state_of_another_shape_is_refused():
    with pytest.raises(ConfigError, match=r"ef_init\(x\)"):
        ef_step(TopK(k=1), torch.ones(2, 3), ef_init(torch.ones(2, 4)))


def test_the_reference_and_the_generator_reach_the_compressor():
    """Error feedback around the lattice quantiser (which decodes against ``ref``) and
    QSGD (which draws from ``generator``) gives the wrapped compressor's own round trip
    of ``x + e``; a reference of the wrong shape is refused."""
    g = torch.Generator().manual_seed(3)
    x = 40 * torch.randn(3, 16, generator=g, dtype=torch.float64)  # far from 0: ref matters
    ref = x + 0.1 * torch.randn(3, 16, generator=g, dtype=torch.float64)
    residual = 0.01 * torch.randn(3, 16, generator=g, dtype=torch.float64)
    lattice = Lattice.with_bits(8, eps=0.01)
    payload, x_hat, state = ErrorFeedback(lattice).step(x, EFState(residual), ref)
    assert torch.equal(ErrorFeedback(lattice).decode(payload, ref), x_hat)  # the receiver's
    torch.testing.assert_close(x_hat, lattice.roundtrip(x + residual, ref)[0], rtol=0, atol=0)
    torch.testing.assert_close(state.residual, x + residual - x_hat, rtol=0, atol=0)
    assert (x_hat - (x + residual)).abs().max() <= 0.005 + 1e-12  # decoded against ref

    qsgd = QSGD(bits=2)
    _, x_hat, _ = ErrorFeedback(qsgd).step(x, EFState(residual), generator=generator(5))
    expected = qsgd.roundtrip(x + residual, generator=generator(5))[0]
    torch.testing.assert_close(x_hat, expected, rtol=0, atol=0)

    with pytest.raises(ConfigError, match="ref must have the shape"):
        ErrorFeedback(TopK(k=2)).step(x, EFState(residual), ref[:2])
