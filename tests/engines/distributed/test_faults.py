"""Fault injection on processes: real deaths, and the injected faults of ``nettrain.faults``.

Plain gloo processes (no torchrun, whose agent would stop the survivors itself) run
``fault_worker.py`` (``nettrain run engine=distributed ...``, several runs in a row in
one launch where nothing dies) with the launcher's environment.

* A synchronous run: when rank 2 is killed with SIGKILL, every survivor fails fast,
  saying from the heartbeats that rank 2 stopped responding. With ``crash=1@5`` every
  rank stops with the FaultError naming agent 1.
* An asynchronous run (``swarm``, ``easgd_async``) outlives a killed worker, rank 0
  included where the store is hosted outside the ranks: the survivors exit 0, the
  record names it, and every exchange between survivors is accounted for.
* Injected faults in ``swarm``: crashed agents make fewer events and their partners lose
  exchanges; message drops lose about ``1 - (1 - p)^2`` of the exchanges; a split loses
  the exchanges across it during its window. Drops and the split are deterministic: the
  test replays the agents' own draws and expects exactly those losses.
* In one process: rank 0's verdict on a silent worker, and a down peer's refusals.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist

from engines.distributed import processes
from engines.distributed.processes import Launch, spec
from helpers import free_port
from nettrain.algorithms.swarm import SwarmSGD
from nettrain.engines.distributed.finish import Finish, Verdict, read_verdict
from nettrain.engines.distributed.gossip import Peer
from nettrain.engines.distributed.liveness import Heartbeat, beating
from nettrain.engines.distributed.store import HOSTED
from nettrain.engines.draws import Draws
from nettrain.engines.states import stack_states
from nettrain.faults import Faults, parse_crashes, parse_split

N = 4
TIMEOUT_S = 10
ROUNDS = 40
COMMON = [f"agents={N}", "hidden=8", "batch_size=8", "progress=false", f"timeout_s={TIMEOUT_S}"]
COMMON += ["eval_every=25"]
ABORT = "terminate called"  # gloo's or TensorPipe's abort at exit


def run_spec(out: Path, *items: str) -> str:
    """One run of the worker: ``nettrain run engine=distributed`` into ``out``."""
    return spec("run", "engine=distributed", *COMMON, *items, "--out", str(out))


def launch(
    folder: Path,
    runs: list[str],
    world: int = N,
    kill: str | None = None,
    extra: dict[str, str] | None = None,
) -> Launch:
    """Start ``world`` processes of the worker with ``runs``; ``kill``: ``RANK:EVENT``."""
    return processes.launch(folder, runs, world, kill, extra=extra)


def records_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def record_of(out: Path) -> dict[str, Any]:
    """The last record (``eval_every`` is 25: records at rounds 0 and 25 before it)."""
    records = records_of(out)
    assert [r["round"] for r in records] == [0, 25, ROUNDS]
    return records[-1]


def test_a_killed_rank_makes_the_others_exit_naming_it(tmp_path: Path) -> None:
    """A synchronous run: once rank 0 has written a record, rank 2 is killed; every
    survivor must exit non-zero well within ``timeout_s`` and, from the heartbeats in the
    rendezvous store, say that rank 2 stopped responding."""
    out = tmp_path / "run"
    spec = run_spec(out, "rounds=100000", "eval_every=5")
    run = launch(tmp_path, [spec])
    try:
        deadline = time.monotonic() + 120
        metrics = out / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().strip()):
            if time.monotonic() > deadline or any(p.poll() is not None for p in run.procs):
                pytest.fail("the run did not start:\n" + run.text(0)[-3000:])
            time.sleep(0.2)
        run.procs[2].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        codes = {r: run.procs[r].wait(timeout=TIMEOUT_S + 20) for r in (0, 1, 3)}
        elapsed = time.monotonic() - killed
    finally:
        run.stop()
    text = {r: run.text(r) for r in (0, 1, 3)}
    assert all(code != 0 for code in codes.values()), (codes, text)
    assert elapsed < TIMEOUT_S + 15, elapsed
    for r, log in text.items():
        assert f"nettrain: error: rank {r}: " in log, log[-3000:]
        assert "Rank(s) 2 stopped responding" in log, log[-3000:]


def outlive(
    tmp_path: Path,
    world: int,
    *items: str,
    killed: int = 2,
    spec_: str | None = None,
    extra: dict[str, str] | None = None,
) -> tuple[dict[str, Any], Path]:
    """An asynchronous run whose rank ``killed`` SIGKILLs itself at its 5th event: the
    survivors exit 0 within ``timeout_s`` of its death, with no abort; the last record
    and the run folder (``spec_``: the run, default ``run_spec`` of ``items``)."""
    out = tmp_path / "run"
    runs = [spec_ or run_spec(out, *items)]
    run = launch(tmp_path, runs, world, kill=f"{killed}:5", extra=extra)
    survivors = [r for r in range(world) if r != killed]
    try:
        assert run.procs[killed].wait(timeout=180) == -signal.SIGKILL, run.text(killed)[-3000:]
        died = time.monotonic()
        codes = {r: run.procs[r].wait(timeout=TIMEOUT_S + 30) for r in survivors}
        elapsed = time.monotonic() - died
    finally:
        run.stop()
    text = {r: run.text(r) for r in survivors}
    assert all(code == 0 for code in codes.values()), (
        codes,
        {r: t[-3000:] for r, t in text.items()},
    )
    assert not any(ABORT in t for t in text.values()), text
    assert elapsed < TIMEOUT_S + 20, elapsed
    start, first, record = records_of(out)  # round 25: the killed rank is dead by then
    assert start["round"] == 0 and "crashed_ranks" not in start
    assert first["crashed_ranks"] == record["crashed_ranks"] == [killed]
    assert first["round"] == 25 and record["round"] == ROUNDS
    return record, out


def test_gossip_survivors_of_a_killed_rank_0_take_over_the_run(tmp_path: Path) -> None:
    """SwarmSGD on a ring, the rendezvous store hosted outside the ranks (as ``nettrain
    run ... nproc=P`` hosts it), rank 0 dead at its 5th event: its neighbours lose their
    exchanges with it and go on; rank 1 leads from then on, writing the records of
    rounds 25 and 40 after rank 0's of round 0, and the run folder's summary and final
    models (the survivors'); every exchange one survivor delivered to another was
    answered once."""
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, N, True, timedelta(seconds=60), wait_for_workers=False)
    args = ["run", "engine=distributed", *COMMON, "algorithm=swarm", f"rounds={ROUNDS}"]
    runs = json.dumps({"port": port, "args": [*args, "--out", str(tmp_path / "run")]})
    record, out = outlive(tmp_path, N, killed=0, spec_=runs, extra={HOSTED: "1"})
    del store
    assert record["events"] == (N - 1) * ROUNDS  # the survivors' events
    assert record["interactions_unmatched"] == 0
    assert record["exchanges_lost"] > 0  # ranks 1 and 3 drew rank 0 after its death
    # a request per event, a reply per exchange answered
    assert record["messages_total"] == record["events"] + record["interactions_answered"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and summary["test_accuracy"] == record["test_accuracy"]
    x = torch.load(out / "final.pt", weights_only=True)
    assert x.shape[0] == N - 1 and bool(torch.isfinite(x).all())  # the survivors' models


def test_gossip_survivors_of_a_killed_process_of_two_agents_finish(tmp_path: Path) -> None:
    """SwarmSGD, 8 agents on 4 processes (2 each): the process of agents 4 and 5 dies at
    its 5th event. Both its agents are dropped and the record names the rank; the other
    six agents made all their events; their neighbours 3 and 6 lost exchanges with the
    dead; every exchange one survivor delivered to another was answered once."""
    n = 2 * N
    items = [c for c in COMMON if not c.startswith("agents=")] + [f"agents={n}"]
    args = ["run", "engine=distributed", *items, "algorithm=swarm", f"rounds={ROUNDS}"]
    record, out = outlive(tmp_path, N, spec_=spec(*args, "--out", str(tmp_path / "run")))
    assert record["events"] == (n - 2) * ROUNDS  # the survivors' agents'
    assert record["interactions_unmatched"] == 0
    assert record["exchanges_lost"] > 0
    assert record["messages_total"] == record["events"] + record["interactions_answered"]
    x = torch.load(out / "final.pt", weights_only=True)
    assert x.shape[0] == n - 2 and bool(torch.isfinite(x).all())


def test_centre_survivors_of_a_killed_worker_finish(tmp_path: Path) -> None:
    """Asynchronous EASGD, 4 workers and a parameter server: the dead worker 2 takes no
    one's exchange with it; the server applied every survivor's exchange exactly once."""
    tau = 2
    record, out = outlive(
        tmp_path, N + 1, "algorithm=easgd_async", "servers=1", f"tau={tau}", f"rounds={ROUNDS}"
    )
    events = (N - 1) * ROUNDS // tau
    exchanges = sum(r["exchanges"] for r in records_of(out))  # per interval
    assert record["events"] == exchanges == events
    assert record["exchanges_unmatched"] == 0
    assert record["exchanges_lost"] == 0
    assert bool(torch.isfinite(torch.load(out / "centre.pt", weights_only=True)).all())


CRASH, DROP, SPLIT = "2@10:20,3@25", 0.3, "10:30"


@pytest.fixture(scope="module")
def injected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, int], Launch]:
    """One launch, four runs in a row: SwarmSGD with crashes, with drops, with a split;
    then D-PSGD with a crash, which must stop every rank (last: the worker stops there)."""
    folder = tmp_path_factory.mktemp("injected")
    swarm = ["algorithm=swarm", f"rounds={ROUNDS}"]
    runs = [
        run_spec(folder / "crash", *swarm, f"crash={CRASH}"),
        run_spec(folder / "drop", *swarm, f"message_drop={DROP}"),
        run_spec(folder / "split", *swarm, "topology=complete", f"split={SPLIT}"),
        run_spec(folder / "dpsgd", "algorithm=dpsgd", "rounds=20", "crash=1@5"),
    ]
    run = launch(folder, runs)
    try:
        codes = {r: p.wait(timeout=400) for r, p in enumerate(run.procs)}
    finally:
        run.stop()
    return folder, codes, run


def lost_by_replay(faults: Faults, neighbours: list[list[int]]) -> int:
    """Exchanges that must be lost, replayed from the agents' own draws (seed 0): each
    agent's event ``e`` is in its round ``e``; a down agent draws nothing; an exchange
    is lost by its drawn drops, or by a partner down or across the split."""
    algo = SimpleNamespace(local_steps=1, geometric_phases=False)
    lost = 0
    for a in range(N):
        draws = Draws(0, a, neighbours[a], algo, faults.drop)  # type: ignore[arg-type]
        for t in range(ROUNDS):
            if not faults.down(a, t):
                partner, (_, reply) = draws.partner(), draws.losses()
                lost += reply or faults.unreachable(a, partner, t)
    return lost


def test_crashed_agents_make_fewer_events(injected) -> None:
    """Agent 2 is down in rounds 10..19, agent 3 from round 25 on: they skip those events,
    their partners lose the exchanges with them (at least those the draws foresee; a
    request that reaches a down agent's peer is refused as well), the run finishes."""
    folder, _, _ = injected
    record = record_of(folder / "crash")
    assert record["events"] == N * ROUNDS - 10 - 15
    ring = [sorted({(a - 1) % N, (a + 1) % N}) for a in range(N)]
    foreseen = lost_by_replay(Faults(N, crashes=parse_crashes(CRASH, N)), ring)
    assert foreseen > 0
    assert record["exchanges_lost"] >= foreseen
    assert record["interactions_unmatched"] == 0
    assert "crashed_ranks" not in record  # an injected crash kills no process


def test_dropped_messages_lose_exchanges(injected) -> None:
    """``message_drop=0.3``: an exchange loses its request or its reply with probability
    ``1 - 0.7^2 = 0.51``, exactly as the agents' own draws say; a lost request gets no
    reply, so nothing is left unmatched."""
    folder, _, _ = injected
    record = record_of(folder / "drop")
    assert record["events"] == N * ROUNDS
    assert 0.35 < record["exchanges_lost"] / record["events"] < 0.67
    ring = [sorted({(a - 1) % N, (a + 1) % N}) for a in range(N)]
    assert record["exchanges_lost"] == lost_by_replay(Faults(N, drop=DROP), ring)
    assert record["interactions_unmatched"] == 0
    assert record["interactions_answered"] < record["events"]
    assert record["messages_total"] == record["events"] + record["interactions_answered"]


def test_a_split_loses_the_exchanges_across_it(injected) -> None:
    """Complete graph, split in rounds 10..29: exactly the exchanges that an agent's draws
    send across the split during its window are lost."""
    folder, _, _ = injected
    record = record_of(folder / "split")
    complete = [[b for b in range(N) if b != a] for a in range(N)]
    expected = lost_by_replay(Faults(N, split=parse_split(SPLIT)), complete)
    assert expected > 0
    assert record["exchanges_lost"] == expected
    assert record["interactions_answered"] == N * ROUNDS - expected
    assert record["interactions_unmatched"] == 0


def test_a_synchronous_run_stops_at_a_crash(injected) -> None:
    """D-PSGD needs every agent every round: with ``crash=1@5`` every rank exits non-zero
    with the FaultError naming agent 1 at round 6."""
    folder, codes, run = injected
    for r in range(N):
        log = run.text(r)
        assert log.count("fault_worker: exit 0") == 3, log[-3000:]  # the swarm runs
        assert codes[r] == 1, log[-3000:]
        assert "agent(s) 1 crashed before round 6" in log, log[-3000:]
        assert ABORT not in log
    assert not (folder / "dpsgd" / "final.pt").exists()


def test_rank_0_takes_a_silent_worker_for_dead_and_the_others_read_it() -> None:
    """In one process, on an in-memory store: workers 0 and 1 finish, worker 2 never
    beats; rank 0 decides that 2 crashed once its heartbeat has been still long enough,
    rank 1 reads that verdict, and the survivors' final states come through the store."""
    store = dist.HashStore()
    ends = [
        Finish(store, r, 3, "events/0.0/", dead_after_s=0.2, poll=lambda: time.sleep(0.01))
        for r in (0, 1)
    ]
    for r, end in enumerate(ends):
        store.add(f"alive/{r}", 1)
        end.done()
    began = time.monotonic()
    verdict = ends[0].verdict()
    assert verdict == Verdict(crashed=(2,)) and not verdict.clean
    assert 0.2 <= time.monotonic() - began < 5
    assert ends[1].verdict() == verdict == read_verdict(store, "events/0.0/")
    ends[1].post({"x": torch.ones(1, 3), "events": 7})
    (final,) = ends[0].collect([1]).values()
    assert final["events"] == 7 and torch.equal(final["x"], torch.ones(1, 3))


def test_rank_0_gathers_an_evaluation_without_the_dead_and_not_after_a_failure() -> None:
    """In one process, on an in-memory store: at an evaluation round, rank 0 takes the
    parts that workers 1 and 3 post (and removes them from the store), leaves out
    worker 2 once its heartbeat has been still long enough; once a worker failed, it
    gathers nothing."""
    store = dist.HashStore()
    ends = [
        Finish(store, r, 4, "events/0.0/", dead_after_s=0.2, poll=lambda: time.sleep(0.01))
        for r in range(4)
    ]
    for r in (1, 3):
        store.add(f"alive/{r}", 1)
        ends[r].post({"events": r}, "eval/25")
    gathered = ends[0].gather("eval/25", [1, 2, 3])
    assert gathered is not None and gathered.dead == (2,)
    assert {r: p["events"] for r, p in gathered.posts.items()} == {1: 1, 3: 3}
    assert not store.check(["events/0.0/eval/25/1", "events/0.0/eval/25/3"])
    ends[3].fail("diverged")
    ends[1].post({"events": 1}, "eval/50")
    assert ends[0].gather("eval/50", [1, 3]) is None


def test_a_partner_that_does_not_answer_is_dead_only_if_its_heartbeat_stopped() -> None:
    """An rpc that timed out: a rank whose heartbeat still moves is slow, not dead (its
    exchanges are tried again); one whose counter is still is taken for dead."""
    store = dist.HashStore()
    with Heartbeat(store, 1, period_s=0.01):
        assert beating(store, 1, window_s=0.1)
    assert not beating(store, 1, window_s=0.1)  # stopped
    assert not beating(store, 2, window_s=0.1)  # never beat


def test_stack_states_puts_the_survivors_rows_in_order() -> None:
    states = [SwarmSGD().init(torch.full((1, 2), float(r)), None, None) for r in (0, 3)]
    both = stack_states(states)
    assert torch.equal(both.x, torch.tensor([[0.0, 0.0], [3.0, 3.0]]))
    assert both.interactions.shape == (2,)


def test_a_down_peer_refuses_exchanges_and_changes_nothing() -> None:
    """While its agent is down a peer answers None (a lost request for the initiator);
    back up, it averages again."""
    algo = SwarmSGD()
    peer = Peer(algo, torch.zeros(2), torch.Generator())
    payload = algo.compressor.encode(torch.ones(1, 2))
    peer.set_down(True)
    assert peer.exchange(1, payload) is None
    assert torch.equal(peer.published, torch.zeros(2)) and not peer.answered
    peer.set_down(False)
    assert peer.exchange(1, payload) is not None
    assert torch.equal(peer.published, torch.full((2,), 0.5)) and peer.answered[1] == 1
    peer.close()
    assert peer.exchange(1, payload) is None
