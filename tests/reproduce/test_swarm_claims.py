"""The claim checks of `nettrain reproduce swarm`, on hand-made records."""

from __future__ import annotations

from typing import Any

import pytest

from nettrain.reproduce.swarm import check, extra_methods, methods, rounds_for

N = 16


def curve(final_acc: float, *, gamma: float = 0.05, bytes_per: int = 100, vt: float = 1.0):
    """Four records; accuracy climbs to ``final_acc``; bytes and time grow linearly."""
    return [
        {
            "test_accuracy": final_acc - 0.03 * (3 - k),
            "consensus_distance": gamma,
            "bytes_total": bytes_per * (k + 1),
            "virtual_time_s": vt * (k + 1),
        }
        for k in range(4)
    ]


def good() -> dict[str, list[dict[str, Any]]]:
    runs = {f"n{N} {label}": curve(0.80) for label in methods() | extra_methods()}
    runs[f"n{N} allreduce"] = curve(0.80, bytes_per=1000)
    runs[f"n{N} swarm 8-bit"] = curve(0.81, bytes_per=100, gamma=0.05)
    runs[f"n{N} swarm 8-bit H=1"] = curve(0.81, gamma=0.02)
    runs[f"n{N} swarm 8-bit H=4"] = curve(0.81, gamma=0.09)
    runs[f"n{N} swarm 8-bit complete"] = curve(0.81, gamma=0.01)
    runs[f"n{N} swarm qsgd 8-bit"] = curve(0.70)
    runs[f"n{N} allreduce stragglers"] = curve(0.80, vt=4.0)
    runs[f"n{N} swarm 8-bit stragglers"] = curve(0.80, vt=1.0)
    return runs


def test_every_claim_holds_on_good_records() -> None:
    claims = check(good(), (N,), N)
    assert [c.holds for c in claims] == [True] * 5


@pytest.mark.parametrize(
    ("claim", "run", "change"),
    [
        (0, "swarm 8-bit", {"final_acc": 0.78, "bytes_per": 100}),
        (1, "swarm 8-bit", {"final_acc": 0.81, "bytes_per": 400}),
        (2, "swarm 8-bit H=4", {"final_acc": 0.81, "gamma": 0.03}),
        (2, "swarm 8-bit complete", {"final_acc": 0.81, "gamma": 0.2}),
        (3, "swarm 8-bit stragglers", {"final_acc": 0.80, "vt": 3.0}),
        (4, "swarm qsgd 8-bit", {"final_acc": 0.82}),
    ],
)
def test_each_claim_fails_when_its_records_say_so(claim: int, run: str, change: dict) -> None:
    runs = good()
    runs[f"n{N} {run}"] = curve(**change)
    claims = check(runs, (N,), N)
    assert not claims[claim].holds


def test_asynchronous_runs_get_the_epoch_multiplier() -> None:
    """Equal epochs: a synchronous round is n B samples; SwarmSGD's n H B, then x2."""
    assert rounds_for({"algorithm": "allreduce"}, 16, 12_000, 4) == 94
    assert rounds_for({"algorithm": "swarm", "local_steps": 2}, 16, 12_000, 4) == 94
    assert rounds_for({"algorithm": "swarm", "local_steps": 4}, 16, 12_000, 4) == 47
