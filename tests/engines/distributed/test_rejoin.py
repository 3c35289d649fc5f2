"""Workers that rejoin an asynchronous gossip run (``rejoin=true``, ``restarts=N``).

* End to end: SwarmSGD on 4 plain processes, rank 2 SIGKILLs itself at its 50th event and
  is started again by hand (the same command and ``RANK``). It rejoins within seconds
  from a live neighbour's model (the donor's account of what it handed over equals the
  rejoined process's first model), the records name rank 2 as crashed until it is back,
  every survivor and the new process exit 0, and the final audit balances: the
  exchanges of the incarnations alive at the end match one for one.
* nettrain's launcher starts a process killed by a signal again (``restarts``), once per
  restart left, and not one that exits on its own.
* In one process: a peer counts an initiator's exchanges afresh from its next
  incarnation and refuses an older one; the store's word on deaths, rejoins and who leads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from engines.distributed import processes
from helpers import free_port
from nettrain.algorithms.swarm import SwarmSGD
from nettrain.config import RunConfig
from nettrain.engines.distributed.finish import Finish, incarnation_key
from nettrain.engines.distributed.gossip import Peer, Reply
from nettrain.engines.distributed.launch import launch_local
from nettrain.engines.distributed.rpc import MEMBERS, _forget
from nettrain.engines.distributed.store import HOSTED
from nettrain.errors import ConfigError

# Every agent sleeps 9 times its computing after each event (stragglers=1,
# straggler_slowdown=10), so that the survivors' events outlast the start of the new process
# on a slow host too: without, they ran 1,950 of 2,000 events while it started (11 s) on
# an idle one, all of them on a loaded one; with, it is back after 300 to 500 of 1,000.
N, ROUNDS, KILLED = 4, 1000, 2
SLOW = ["stragglers=1", "straggler_slowdown=10"]


def test_a_killed_worker_started_again_rejoins_from_a_live_neighbour(tmp_path: Path) -> None:
    """SwarmSGD, 4 processes, the store hosted outside the ranks; rank 2 dies at its 50th
    event and its process is started again by hand."""
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, N, True, timedelta(seconds=60), wait_for_workers=False)
    out = tmp_path / "run"
    args = ["run", "engine=distributed", f"agents={N}", "hidden=8", "batch_size=8"]
    args += ["progress=false", "timeout_s=10", "eval_every=200", "algorithm=swarm"]
    args += [f"rounds={ROUNDS}", "rejoin=true", *SLOW, "--out", str(out)]
    runs = json.dumps({"port": port, "args": args})
    run = processes.launch(tmp_path, [runs], N, kill=f"{KILLED}:50", extra={HOSTED: "1"})
    again = None
    try:
        assert run.procs[KILLED].wait(timeout=180) == -signal.SIGKILL, run.text(KILLED)[-3000:]
        env = os.environ | {
            HOSTED: "1",
            "RANK": str(KILLED),
            "LOCAL_RANK": str(KILLED),
            "WORLD_SIZE": str(N),
            "MASTER_ADDR": "127.0.0.1",
            "OMP_NUM_THREADS": "1",
        }
        log = tmp_path / "again.log"
        with open(log, "wb") as sink:
            command = [sys.executable, str(processes.WORKER), runs]
            again = subprocess.Popen(command, env=env, stdout=sink, stderr=sink)
        assert again.wait(timeout=180) == 0, log.read_text()[-3000:]
        survivors = [r for r in range(N) if r != KILLED]
        codes = {r: run.procs[r].wait(timeout=60) for r in survivors}
        assert all(c == 0 for c in codes.values()), {r: run.text(r)[-3000:] for r in survivors}
    finally:
        run.stop()
        if again is not None and again.poll() is None:
            again.kill()
    del store
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(0, ROUNDS + 1, 200))
    last = records[-1]
    (rejoin,) = last["rejoins"]
    back = rejoin["round"]
    assert rejoin["rank"] == KILLED and rejoin["incarnation"] == 1
    assert rejoin["donor"] in (1, 3)  # a neighbour on the ring
    assert 50 <= back < ROUNDS and 0 < rejoin["downtime_s"] < 30
    # its first model is the one its donor says it handed over, not its initial one
    assert rejoin["model_sum"] == rejoin["donor_model_sum"]
    assert "crashed_ranks" not in last  # back by the end
    for record in records[1:-1]:  # dead from its 50th event until it rejoined
        assert record.get("crashed_ranks") == ([KILLED] if record["round"] <= back else None)
    # the survivors' events and the new process's, from the round it rejoined at
    assert last["events"] == (N - 1) * ROUNDS + ROUNDS - back
    assert last["interactions_unmatched"] == 0  # counts of the old process left out
    assert last["exchanges_lost"] > 0  # its neighbours drew it while it was dead
    assert last["test_accuracy"] > 0.85


def _dies_once(marker: Path) -> str:
    """A rank's program: rank 1 SIGKILLs itself the first time, rank 0 lives 3 s."""
    return (
        "import os, signal, sys, time\n"
        f"marker = {str(marker)!r}\n"
        "rank = int(os.environ['RANK'])\n"
        "if rank == 1:\n"
        "    with open(marker, 'a') as f: f.write('x')\n"
        "    if len(open(marker).read()) == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    sys.exit(0)\n"
        "time.sleep(3)\n"
    )


@pytest.mark.parametrize("restarts", [0, 2])
def test_the_launcher_starts_a_killed_rank_again(tmp_path: Path, restarts: int) -> None:
    """Rank 1 dies by SIGKILL at its first start: with restarts left it is started again
    (once: its second process exits 0 on its own) and the launch succeeds; without, the
    launch fails with the signal."""
    marker = tmp_path / "starts"
    script = tmp_path / "rank.py"
    script.write_text(_dies_once(marker))
    code = launch_local(
        2, [], "127.0.0.1", free_port(), 10, restarts, command=[sys.executable, str(script)]
    )
    assert marker.read_text() == ("xx" if restarts else "x")
    assert code == (0 if restarts else -signal.SIGKILL)


def test_a_peer_counts_an_initiator_afresh_from_its_next_incarnation() -> None:
    """Exchanges carry the initiator's incarnation and replies the peer's: a later
    incarnation's exchange resets what the peer counted for that initiator (and its
    event numbers), an older one's is refused; a model handed over is noted."""
    algo = SwarmSGD()
    peer = Peer(algo, torch.zeros(2), torch.Generator(), incarnation=3)
    payload = algo.compressor.encode(torch.ones(1, 2))
    for seq in range(4):
        reply = peer.exchange(1, payload, seq)
        assert isinstance(reply, Reply) and reply.incarnation == 3
    assert peer.answered[1] == 4
    assert isinstance(peer.exchange(1, payload, 0, incarnation=1), Reply)  # numbers anew
    assert peer.answered[1] == 1 and peer.met[1] == 1
    assert peer.exchange(1, payload, 9, incarnation=0) is None  # the dead one's
    assert peer.answered[1] == 1
    peer.events = 17
    x, events = peer.model(1, 1)
    assert events == 17 and torch.equal(x, peer.published)
    assert peer.donated == [
        {"rank": 1, "incarnation": 1, "model_sum": float(x.sum()), "events": 17}
    ]


def test_the_store_says_who_is_dead_back_and_leading() -> None:
    """In one process: rank 0 found dead stays dead until a process of it starts again
    (its incarnation grows); a rank that rejoined never leads while one that did not
    lives; the leader does not wait for an evaluation before a rank's rejoin round."""
    store = dist.HashStore()
    ends = [
        Finish(store, r, 3, "events/0.0/", dead_after_s=0.2, poll=lambda: time.sleep(0.01))
        for r in range(3)
    ]
    ends[1].mark_dead([0])
    assert ends[2].leader() == 1 and ends[2].dead == {0}
    assert ends[2].refresh() == []  # still the dead incarnation
    store.add(incarnation_key(0), 1)
    assert ends[2].refresh() == [0] and ends[2].dead == set()
    ends[0].rejoined(40)  # rank 0 back, from round 40: rank 1 leads on
    assert ends[2].leader() == 1 and ends[2].joined(0) == 40
    store.add("alive/0", 1)
    began = time.monotonic()
    gathered = ends[1].gather("eval/40", [0], at=40)  # nothing to wait for
    assert gathered is not None and gathered.dead == (0,) and not gathered.posts
    assert time.monotonic() - began < 0.2
    ends[0].post({"events": 5}, "eval/50")
    gathered = ends[1].gather("eval/50", [0], at=50)
    assert gathered is not None and gathered.posts[0]["events"] == 5


def test_rejoin_is_refused_where_no_process_can_come_back() -> None:
    for keys in ({"algorithm": "swarm"}, {"engine": "distributed", "algorithm": "dpsgd"}):
        with pytest.raises(ConfigError, match="rejoin/restarts"):
            RunConfig.from_keys(keys | {"restarts": 1, "agents": 4})


def test_forgetting_takes_every_incarnation_of_a_name_off_the_group() -> None:
    """The dynamic group's list in the store loses the forgotten names (each incarnation,
    with its id key) and keeps the others, in order; the group's token is free after."""
    store = dist.HashStore()
    store.set(MEMBERS, "agent0-0,agent2-2,agent1-1,agent2-6,")
    for ident, name in ((0, "agent0"), (1, "agent1"), (2, "agent2"), (6, "agent2")):
        store.set(f"names/{ident}", name)
    _forget(store, ["agent2", "agent5"])
    assert store.get(MEMBERS).decode() == "agent0-0,agent1-1,"
    assert store.check(["names/0", "names/1"]) and not store.check(["names/2"])
    assert not store.check(["names/6"])
    assert store.get("RpcGroupManagementToken") == b""
