"""Asynchronous runs of the distributed engine: each rank makes its events at its own pace.

The simulator's event engine (:mod:`nettrain.engines.sim.events`) over the agents this
rank holds (one, or several: :class:`~.placement.Placement`), each drawing the same
partners, step counts and losses as in the simulator
(:class:`~nettrain.engines.draws.Draws`). Gossip: ``rounds`` events an agent, event
``e`` in its round ``e``; centre: ``rounds / tau``, event ``e`` in round ``e tau``. The
rank makes its agents' events in the order of their event numbers: event ``e`` of
every agent (in agent order) before event ``e + 1`` of any, as batches on disjoint
agents (:func:`disjoint_batches`: a new batch starts where an agent of the batch
would act again, as initiator or as partner held here). A batch adds what exchanges
answered since the last batch to the iterates, runs one vectorised ``interact`` (the
initiators' local phases, then their exchanges: with a partner held here in place,
with one held elsewhere over rpc to its :class:`~.gossip.Peer`; with every parameter
server, :mod:`~nettrain.engines.centre`) and publishes every agent's model.

Faults (:mod:`nettrain.faults`, the simulator's semantics): in a round where this agent
is down it makes no event and draws nothing, its peer refuses the others' exchanges, and
it idles as long as its average event so far (so the window lasts about as long in wall
time as the events it misses). An exchange loses its request, its reply or neither by
this agent's own draw, and its request when the partner is down, across the split, or
found dead (its rpc failed and its heartbeat stopped). A slow agent (``slowdown > 1``:
a straggler's slow-down over its speed, docs/faults.md "Heterogeneous agents") sleeps
``slowdown - 1`` times its measured compute (the oracle's passes) after each event; a
faster one runs at the machine's speed. Availability windows are refused before the run (config.py).

The end, agreed in the rendezvous store, survives dead workers (:mod:`.finish`): the
records name the dead ranks (``crashed_ranks``) and evaluate the survivors' models only
(a dead rank's last model is gone with it); the leader (rank 0, or after its death the
lowest live rank, which then takes over the run folder) returns those rows, the others
their own row. Where a rank died, this rank's rpc session is left without waiting for
everyone (``session.graceful`` is False).

With ``checkpoint_every=K`` each rank writes its own snapshot every ``K`` of its rounds
(:mod:`.snapshots`), and a run resumed from them goes on from each rank's own. Faults,
snapshots and rejoins are those of a process that is one agent: a run whose ranks hold
several refuses them (:func:`~.placement.check_grouped_events`).

With ``rejoin=true`` a gossip worker's process started again mid-run (incarnation
``k > 0``) rejoins it (:meth:`DistEvents._rejoin`): it takes the published model of the
first live neighbour that answers (live recovery; its own state is gone with the old
process) and goes on from that neighbour's event count, with random streams of its own
(seeded by ``(seed, rank, k)``: the old ones' positions are gone too). Its neighbours
found it dead, and find it alive again (:meth:`~.finish.Finish.refresh`); the records
count the rejoins (``rejoins``: rank, incarnation, round, donor, downtime).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch

from nettrain.algorithms.base import AsyncAlgorithm, GossipAlgorithm
from nettrain.checkpoint import load_state, state_dict
from nettrain.engines.base import Job, RunResult, check_finite, declared, staleness_fields
from nettrain.engines.distributed.comm import DistCommunicator
from nettrain.engines.distributed.finish import DEAD_AFTER_S, Finish, events_prefix, read_verdict
from nettrain.engines.distributed.gossip import Peer, peer_name
from nettrain.engines.distributed.snapshots import Snapshots, write_snapshot
from nettrain.engines.draws import Draws
from nettrain.engines.driver import Counters, Snapshot, Tick, drive
from nettrain.engines.states import own_rows, stack_buffers, stack_states
from nettrain.engines.timeline import Timeline
from nettrain.errors import DivergenceError, PeerError
from nettrain.patterns import Losses
from nettrain.problem.oracle import agent_seed
from nettrain.recording import RunFolder
from nettrain.wrappers import losing

REJOIN_STREAM = 1 << 16  # a rejoined process's streams: seed (seed, rank, this + k)


@dataclass(frozen=True)
class Rejoined:
    """Where the process that rejoined goes on from, for :func:`drive`: the round of its
    next event (its wall time so far is its predecessor's, gone with it)."""

    round: int
    wall_time_s: float = 0.0


def run_events(
    job: Job,
    folder: RunFolder,
    rank: int,
    comm: DistCommunicator,
    timeout_s: float,
    resume: Snapshots | None = None,
    rejoining: tuple[int, float | None] | None = None,
) -> RunResult:
    """An asynchronous algorithm: this rank's events (module docstring), records every
    ``eval_every`` rounds (:class:`DistEvents`) and the end; with ``resume``, from this
    rank's snapshot; ``rejoining``: this process's incarnation ``k > 0`` and the wall time
    of its predecessor's last heartbeat (module docstring)."""
    start = time.perf_counter()
    events = DistEvents(job, rank, comm, timeout_s, folder, resume, rejoining)
    if events.over:
        return RunResult(events.state.x, [])
    point = resume
    if rejoining is not None:  # before the last round, so that it reaches the end
        point = Rejoined(min(job.rounds - 1, events.e * events.tau))
    drive(job, folder, events, resume=point, start=start)
    if events.timelines is not None:  # the leader: every survivor's intervals
        folder.write_timeline(events.timelines)
    if events.record is None:
        return RunResult(events.state.x, folder.records)
    snap, summary = events.record[1], {}
    if events.wire is not None:  # the leader, at the end: what crossed processes
        summary = {"process_messages": int(events.wire[0]), "process_bytes": int(events.wire[1])}
    return RunResult(snap.x, folder.records, summary, centre=snap.centre, buffers=snap.buffers)


@dataclass(frozen=True)
class Event:
    """One agent's event: it initiates an exchange with ``partner`` (``CENTRE``: the
    servers) after a local phase of ``steps``, losing the request, the reply, or neither."""

    agent: int
    partner: int
    steps: int
    request_lost: bool
    reply_lost: bool


def disjoint_batches(events: list[Event], held: set[int]) -> list[list[Event]]:
    """``events`` cut, in their order, into batches on disjoint agents: a batch ends before
    an event whose initiator, or whose partner held here (in ``held``), is in it already."""
    batches: list[list[Event]] = []
    busy: set[int] = set()
    for event in events:
        rows = {event.agent} | ({event.partner} & held)
        if not batches or busy & rows:
            batches.append([])
            busy = set()
        batches[-1].append(event)
        busy |= rows
    return batches


class DistEvents:
    """This rank's events at its own pace, for :func:`drive` (see :func:`run_events`).

    At each evaluation round ``r`` before the last, every rank whose events reach
    round ``r`` posts its agents' states there through the store (``eval/<r>/<rank>``,
    :meth:`Finish.post`) and goes on; rank 0, once its own events reach ``r``, waits
    until every live rank has posted (:meth:`Finish.gather`; a rank whose heartbeat
    stopped is left out and named in ``crashed_ranks``) and the driver writes the
    record of round ``r`` from those states (:func:`record_of`). The ranks never stop
    together, so the states of one record are each rank's at its own round ``r``, the
    centre the servers' when rank 0 reads it, and ``virtual_time_s`` is None. The last
    record is written at the end, once the survivors' final states are in; only it
    carries the audit of the exchanges (``interactions_answered``,
    ``interactions_unmatched``, ``exchanges_unmatched``), which needs nothing in flight.
    No record is written after a rank diverged (the run then ends with its error).

    The duties of rank 0 fall to the lowest live rank once rank 0 is dead
    (:meth:`Finish.leads`): it adopts the run folder and gathers the next records. This
    rank's snapshots go to ``folder.home`` (:meth:`checkpoint`); ``resume``: the
    snapshots to go on from (:mod:`.snapshots`)."""

    measured = True

    def __init__(
        self,
        job: Job,
        rank: int,
        comm: DistCommunicator,
        timeout_s: float,
        folder: RunFolder | None = None,
        resume: Snapshots | None = None,
        rejoining: tuple[int, float | None] | None = None,
    ) -> None:
        algo = cast(AsyncAlgorithm, job.algorithm)  # schedule "events" (engine.run)
        assert comm.rpc is not None
        n, session, faults = job.n_agents, comm.rpc, job.fault_spec
        store = session.store
        assert store is not None
        self.job, self.algo, self.rank, self.comm, self.faults = job, algo, rank, comm, faults
        self.main, self.label = rank == 0, f"{algo.name} x{n} (distributed, asynchronous)"
        self.agents: list[int] = comm.agents.tolist()  # this rank's, ascending
        processes = comm.placement.processes
        x = job.x0.expand(len(self.agents), -1).clone()  # (m, d)
        self.incarnation = comm.incarnation = rejoining[0] if rejoining else 0
        seed = job.seed  # a rejoined process's streams are its own
        if self.incarnation:
            seed = agent_seed(job.seed, rank, REJOIN_STREAM + self.incarnation)
        shards = [job.shards[a] for a in self.agents]
        self.oracle = job.problem.oracle(shards, self.agents, batch_size=job.batch_size, seed=seed)
        self.peers: dict[int, Peer] = {}  # by agent, in row order
        neighbours: dict[int, list[int]] = {a: [] for a in self.agents}
        if algo.partner == "neighbour":
            gossip = cast(GossipAlgorithm, algo)
            for row, a in enumerate(self.agents):
                generator = torch.Generator().manual_seed(agent_seed(seed, a, 1))
                self.peers[a] = Peer(gossip, x[row], generator, self.incarnation)
                neighbours[a] = sorted(job.topology.base_graph.neighbors(a))
            self.events, self.tau = job.rounds, 1
        else:
            self.tau = algo.local_steps
            self.events = max(1, round(job.rounds / self.tau))
        self.neighbours = neighbours
        self.draws = [Draws(seed, a, neighbours[a], algo, faults.drop) for a in self.agents]
        self.generator = torch.Generator().manual_seed(agent_seed(seed, rank, 2))
        self.slowdown = float(job.cost.slowdown[self.agents].max())  # the slowest agent's
        dead_after_s = min(DEAD_AFTER_S, timeout_s)
        prefix = events_prefix(session.serial)
        self.finish = Finish(store, rank, processes, prefix, dead_after_s)
        self.made, self.busy_s, self.loss_sum, self.loss_count, self.e = 0, 0.0, 0.0, 0, 0
        # each agent's samples, messages, bytes
        self.work = torch.zeros(len(self.agents), 3, dtype=torch.int64)
        self.failed = False  # this rank diverged: it posts no state any more
        self.talk = declared(comm, algo, job.seed, stream=self.generator)  # the algorithm's
        self.state = algo.init(x, self.oracle, self.talk)
        self.record: tuple[Counters, Snapshot] | None = None  # the leader: of the live ranks
        self.backlog: list[tuple[Counters, Snapshot]] = []  # records of rounds gone by
        self.wire: torch.Tensor | None = None  # the leader, at the end: crossed processes
        # timeline=true: this rank's measured events (the communicator notes its talks);
        # the leader gathers every survivor's at the end, into ``timelines``
        self.timeline = Timeline.of(job.timeline_rounds, None)
        self.timelines: list[dict[str, Any]] | None = None
        if self.timeline is not None:
            comm.talks, self.timeline.origin = [], time.perf_counter()
        self.folder, self.began = folder, time.perf_counter()
        # a resumed run, [j, i]: exchanges of initiator i with j (an agent, or server
        # rank n + s) that the snapshots disagree on (lost at the crash)
        self.offsets = resume.offsets if resume is not None else None
        if resume is not None:
            self.began -= resume.wall_time_s
            self._restore(resume.load(rank))
        self.rejoined: dict[str, Any] | None = None  # this process's rejoin, for the record
        self.over = False  # this process came back after the run's end: nothing to do
        if rejoining is not None:
            self._rejoin(neighbours[rank], rejoining[1])
        for a, peer in self.peers.items():
            session.host(peer_name(a), peer)

    @property
    def peer(self) -> Peer | None:
        """The peer of a rank that is one gossip agent (what rejoins and snapshots keep)."""
        return self.peers.get(self.rank) if len(self.agents) == 1 else None

    def _rejoin(self, neighbours: list[int], down_since: float | None) -> None:
        """This rank's process (one agent) started again: take the published model of the
        first live neighbour that answers (:meth:`~.gossip.Peer.model`), and its event
        count as this rank's; ``down_since``: the wall time of the previous process's last
        heartbeat."""
        rank, session, peer, finish = self.rank, self.comm.rpc, self.peer, self.finish
        assert session is not None and peer is not None
        if read_verdict(finish.store, finish.prefix) is not None:  # nothing to rejoin
            ended = f"rank {rank}: the run ended before this process could rejoin it"
            print(ended, file=sys.stderr)
            self.over = True
            return
        for j in neighbours:
            try:
                donor = session.remote(j, peer_name(j))
                x, events = donor.rpc_sync("model", rank, self.incarnation)
                break
            except PeerError:
                continue  # dead too: the next one
        else:
            raise PeerError(
                f"rank {rank}: no neighbour ({neighbours}) answered to hand its model over; "
                "the run cannot take this process back"
            )
        self.e = min(events, self.events)
        self.state = self.algo.init(x[None], self.oracle, self.talk)
        peer.publish(self.state.x[0])
        peer.events = self.e
        finish.rejoined(self.e * self.tau)
        self.rejoined = {
            "rank": rank,
            "incarnation": self.incarnation,
            "round": self.e * self.tau,
            "donor": j,
            "downtime_s": time.time() - down_since if down_since is not None else None,
            "model_sum": float(self.state.x[0].sum()),
        }

    def _restore(self, saved: dict[str, Any]) -> None:
        """Go on from this rank's snapshot (:meth:`checkpoint`; one agent a rank)."""
        comm, counters, (draws,) = self.comm, saved["counters"], self.draws
        self.state = load_state(self.state, saved["state"])
        self.oracle.load_local_state(saved["oracle"])
        draws.load_state_dict(saved["draws"])
        self.generator.set_state(saved["generator"])
        if self.peer is not None:
            self.peer.load_state(saved["peer"], self.state.x[0])
        delivered = saved["comm"]["delivered"]  # by partner
        comm.delivered = Counter({(self.rank, j): c for j, c in delivered.items()})
        comm.lost = saved["comm"]["lost"]
        comm.staleness = Counter(saved["comm"]["staleness"])
        self.e, self.made, self.busy_s = counters["e"], counters["made"], counters["busy_s"]
        self.loss_sum, self.loss_count = counters["loss_sum"], counters["loss_count"]
        self.work = counters["work"].reshape(1, 3).clone()
        self.oracle.meter.reset()  # the start's work was counted before the snapshot
        comm.traffic.reset()

    def advance(self, stop: int) -> Iterator[Tick]:
        """This rank's events in its rounds before ``stop``; at an evaluation round, its
        state posted (rank 0: everyone's gathered); at the last, the end."""
        last = min(self.events, -(-stop // self.tau))
        while self.e < last:
            self._events(self.e)
            self.e += 1
            yield Tick(min(self.job.rounds, self.e * self.tau))
        if stop == self.job.rounds:
            self._end()
        elif stop % self.job.eval_every == 0:
            self._interim(stop)

    def _events(self, e: int) -> None:
        """Event ``e`` of every agent here, in the agents' round ``e tau``, as batches on
        disjoint agents (after a divergence: none)."""
        faults, comm, t = self.faults, self.comm, e * self.tau
        events = []
        for a, draws in zip(self.agents, self.draws, strict=True):
            if a in self.peers:
                self.peers[a].set_down(faults.down(a, t))
            if faults.down(a, t):  # no local steps, no exchange, no draws
                continue
            partner, steps = draws.partner(), draws.steps()
            if partner >= 0 and comm.owner(partner) in comm.dead:  # perhaps back: rejoined
                comm.dead.difference_update(self.finish.refresh())
            request, reply = draws.losses(faults.unreachable(a, partner, t))
            events.append(Event(a, partner, steps, request, reply))
        if not events:  # every agent here is down: idle as long as an average event
            time.sleep(self.busy_s / self.made if self.made else 0.0)
            return
        comm.seq = e
        batches = disjoint_batches(events, set(self.agents))
        for k, batch in enumerate(batches):
            if self.failed:
                return
            self._batch(batch, e, last=k == len(batches) - 1)

    def _shifted(self) -> None:
        """Add to the iterates what the peers' exchanges added since the last call."""
        if self.peers:
            shift = torch.stack([peer.take_shift() for peer in self.peers.values()])
            self.state = dataclasses.replace(self.state, x=self.state.x + shift)

    def _batch(self, batch: list[Event], e: int, last: bool) -> None:
        """One batch of events number ``e`` on disjoint agents; ``last``: the last batch
        of that number here."""
        algo, comm, t = self.algo, self.comm, e * self.tau
        agents = [event.agent for event in batch]
        pairs = torch.tensor([[event.agent, event.partner] for event in batch])
        steps = torch.tensor([[event.steps, 0] for event in batch])
        lost = Losses(
            torch.tensor([event.request_lost for event in batch]),
            torch.tensor([event.reply_lost for event in batch]),
        )
        self._shifted()
        begin, _ = time.perf_counter(), self.oracle.meter.take_seconds()
        state, loss = algo.interact(self.state, pairs, self.oracle, losing(self.talk, lost), steps)
        self.state = state
        if self.slowdown > 1:  # its computing (the oracle's passes), again
            time.sleep((self.slowdown - 1) * self.oracle.meter.take_seconds())
        self.busy_s += time.perf_counter() - begin
        if self.timeline is not None and self.timeline.wants(t + 1):
            talks = comm.talks or []
            comm.talks = [] if self.timeline.wants(t + 1 + (self.tau if last else 0)) else None
            self.timeline.measured_round(t + 1, agents, begin, time.perf_counter(), talks)
        for row, peer in enumerate(self.peers.values()):
            peer.publish(state.x[row])
        for a in agents:
            if a in self.peers:
                self.peers[a].events = e + 1
        if comm.dead - self.finish.dead:  # partners found dead: every rank should know
            self.finish.mark_dead(comm.dead)
        self.made, self.loss_count = self.made + len(batch), self.loss_count + loss.numel()
        self.loss_sum += float(loss.sum())
        if not bool(torch.isfinite(loss).all()):
            named = loss.new_zeros(self.job.n_agents)  # (n,): the message names the agents
            named[agents] = loss
            try:
                check_finite(named, t, algo.stability_hint)
            except DivergenceError as err:  # the others learn it from the verdict
                self.finish.fail(str(err))
                self.failed = True
                self.e = self.events - 1  # no more events

    def _fold_work(self) -> None:
        """Add the work counted since the last call to :attr:`work`."""
        samples = self.oracle.meter.reset()
        messages, nbytes, _ = self.comm.traffic.reset()
        self.work += torch.stack([samples, messages, nbytes], 1).to(torch.int64)

    def _exchanges(self) -> dict[str, torch.Tensor]:
        """This rank's counts of the exchanges, a row per agent here: ``delivered`` and
        ``delivered_met`` ``(m, n + S)`` (requests that reached each partner, an agent or
        server ``s`` as ``n + s``, and the partner's incarnation counted); ``answered``
        and ``answered_met`` ``(m, n)`` (exchanges answered, in place or by the peer, and
        the initiator's incarnation counted); ``replies`` ``(m, 3)`` (the work of the
        peers' replies: none, messages, bytes)."""
        n, comm, m = self.job.n_agents, self.comm, len(self.agents)
        world, row = n + len(comm.server_ranks), comm.held()
        delivered = torch.zeros(m, world, dtype=torch.int64)
        for (a, j), count in comm.delivered.items():
            delivered[row[a], j] += count
        delivered_met = torch.zeros(m, world, dtype=torch.int64)
        for j, incarnation in comm.met.items():
            delivered_met[:, j] = incarnation
        answered = torch.zeros(m, n, dtype=torch.int64)
        for (j, a), count in comm.answered.items():
            answered[row[j], a] += count
        answered_met = torch.zeros(m, n, dtype=torch.int64)
        replies = torch.zeros(m, 3, dtype=torch.int64)
        for k, peer in enumerate(self.peers.values()):
            by_peer = torch.tensor([peer.answered[i] for i in range(n)], dtype=torch.int64)
            answered[k] += by_peer
            answered_met[k] = torch.tensor([peer.met.get(i, 0) for i in range(n)])
            replies[k, 1:] = torch.tensor([int(by_peer.sum()), peer.reply_bytes])
        return {
            "delivered": delivered,
            "delivered_met": delivered_met,
            "answered": answered,
            "answered_met": answered_met,
            "replies": replies,
        }

    def _mine(self) -> dict[str, Any]:
        """This rank's part of a record: its agents' states (with what exchanges added
        since the last batch), work so far, and loss and staleness since its previous part."""
        comm = self.comm
        self._fold_work()
        counts = self._exchanges()
        replies = counts.pop("replies")
        self._shifted()
        state = self.state
        if self.peers:  # the exchanges the peers answered: the simulator counts both sides
            interactions = state.interactions + replies[:, 1].to(state.interactions.device)
            state = dataclasses.replace(state, interactions=interactions)
        staleness, comm.staleness = comm.staleness, Counter()
        loss = (self.loss_sum, self.loss_count)
        self.loss_sum, self.loss_count = 0.0, 0
        wire = torch.tensor([comm.wire["messages"], comm.wire["bytes"]], dtype=torch.int64)
        return counts | {
            "agents": self.agents,
            "state": state,
            "work": self.work + replies,
            "wire": wire + replies[:, 1:].sum(0),  # the peers' replies cross processes
            "incarnation": self.incarnation,
            "rejoined": self.rejoined,
            "donated": [gift for peer in self.peers.values() for gift in peer.donated],
            "lost": comm.lost,
            "events": self.made,
            "loss": loss,
            "staleness": staleness,
            "buffers": self.oracle.buffers,
        }

    def _interim(self, stop: int) -> None:
        """Evaluation round ``stop``: post this rank's part; the leader gathers everyone's."""
        self.record = None
        if self.failed:
            return
        key, finish = f"eval/{stop}", self.finish
        if not finish.leads():
            finish.post(self._mine(), key)
            return
        if self._take_over(stop):
            self.record = self._gathered(stop, {self.rank: self._mine()})

    def _gathered(
        self, stop: int, parts: dict[int, dict[str, Any]]
    ) -> tuple[Counters, Snapshot] | None:
        """The leader's record of evaluation round ``stop`` from ``parts`` and what every
        other live rank posts for it; None if a rank diverged (the verdict says so)."""
        finish = self.finish
        finish.refresh()
        live = [r for r in range(finish.n) if r not in parts and r not in finish.dead]
        gathered = finish.gather(f"eval/{stop}", live, self.job.x0.device, stop)
        if gathered is None:
            return None
        parts = parts | gathered.posts
        ranks = sorted(parts)
        dead = tuple(sorted(finish.dead | set(gathered.dead)))
        return record_of(self.job, self.comm, [parts[r] for r in ranks], dead, stop, self.offsets)

    def _take_over(self, stop: int) -> bool:
        """This rank leads: where it did not write the run folder (rank 0 died), it
        adopts it and gathers, into :attr:`backlog`, the records of the evaluation rounds
        before ``stop`` that the folder lacks (a leader died before it wrote them; every
        live rank posted its part for them, this one too). False if a rank diverged."""
        if self.folder is None or self.folder.path is not None:
            return True
        self.folder.adopt()
        written = self.folder.records[-1]["round"] if self.folder.records else 0
        every = self.job.eval_every
        for missed in range(written + every - written % every, stop, every):
            record = self._gathered(missed, {})
            if record is None:
                return False
            self.backlog.append(record)
        return True

    def late(self) -> list[tuple[Counters, Snapshot]]:
        late, self.backlog = self.backlog, []
        return late

    def _end(self) -> None:
        """The end agreed in the store (:mod:`.finish`); the leader collects the survivors."""
        job, rank, comm, finish = self.job, self.rank, self.comm, self.finish
        session = comm.rpc
        assert session is not None
        finish.done()
        verdict = finish.verdict()  # meanwhile the rpc threads answer the others
        if verdict.crashed:
            session.graceful = False  # a dead rank never reaches the graceful shutdown
        if verdict.error is not None:
            raise DivergenceError(verdict.error)
        if rank in verdict.crashed:
            raise PeerError(
                f"rank {rank}: rank {verdict.leader} took this rank for dead (its heartbeat "
                f"stopped for {finish.dead_after_s} s) and finished the run without it"
            )
        for peer in self.peers.values():
            peer.close()  # every survivor is done: nothing is in flight any more
        mine = self._mine()
        self.state = mine["state"]
        if self.timeline is not None:
            mine["timeline"] = self.timeline.events
        if rank != verdict.leader:
            finish.post(mine)
            return
        self._take_over(job.rounds)  # nobody failed: the verdict says so
        survivors = [r for r in range(finish.n) if r not in verdict.crashed]
        others = [r for r in survivors if r != rank]
        finals = {rank: mine} | finish.collect(others, job.x0.device)
        parts = [finals[r] for r in survivors]
        if self.timeline is not None:
            self.timelines = [e for part in parts for e in part["timeline"]]
        self.wire = torch.stack([part["wire"] for part in parts]).sum(0)
        at, crashed = job.rounds, verdict.crashed
        self.record = record_of(job, comm, parts, crashed, at, self.offsets, True)
        if comm.server_ranks:  # they may leave now
            comm.release_servers()

    def counters(self) -> Counters:
        if self.record is None:  # no record here
            return Counters({}, None, float("nan"), self.job.rounds)
        return self.record[0]

    def snapshot(self) -> Snapshot | None:
        return None if self.record is None else self.record[1]

    def checkpoint(self, stop: int) -> None:
        """Write this rank's snapshot at its round ``stop`` (:mod:`.snapshots`; one agent
        a rank): its state with what exchanges added since its last event, taken with its
        peer's counters; its random streams and batches drawn; its counters. Returns None:
        the ranks never stop together, so no rank writes a checkpoint of the run."""
        if self.folder is None or self.folder.home is None or self.failed:
            return None
        comm, state, peer, (draws,) = self.comm, self.state, None, self.draws
        if self.peer is not None:
            shift, peer = self.peer.take_state()
            self.state = state = dataclasses.replace(state, x=state.x + shift[None])
        self._fold_work()
        saved = {
            "state": state_dict(state),
            "oracle": self.oracle.local_state(),
            "draws": draws.state_dict(),
            "generator": self.generator.get_state(),
            "peer": peer,
            "comm": {
                "delivered": {j: c for (_, j), c in comm.delivered.items()},  # by partner
                "lost": comm.lost,
                "staleness": dict(comm.staleness),
            },
            "counters": {
                "e": self.e,
                "made": self.made,
                "busy_s": self.busy_s,
                "loss_sum": self.loss_sum,
                "loss_count": self.loss_count,
                "work": self.work[0].clone(),
            },
        }
        wall = time.perf_counter() - self.began
        entry = {"round": stop, "events": self.e, "wall_time_s": wall}
        write_snapshot(self.folder.home, self.rank, saved, entry)
        return None


def record_of(
    job: Job,
    comm: DistCommunicator,
    parts: list[dict[str, Any]],
    crashed: tuple[int, ...],
    at: int,
    lost_at_crash: torch.Tensor | None = None,
    audit: bool = False,
) -> tuple[Counters, Snapshot]:
    """The leader's record at round ``at`` of the live ranks' agents, from their ``parts``
    (:meth:`DistEvents._mine`, in rank order; the agents put back in agent order);
    ``crashed``: the dead ranks; ``audit``: at the end, check every exchange between
    survivors (nothing is in flight any more) but those a resumed run lost at its crash
    (``lost_at_crash``, :attr:`DistEvents.offsets`)."""
    n = job.n_agents
    offsets = lost_at_crash
    if offsets is None:
        offsets = torch.zeros(n + len(comm.server_ranks), n, dtype=torch.int64)
    held = [a for f in parts for a in f["agents"]]  # in rank order
    order = torch.argsort(torch.tensor(held))
    survivors = sorted(held)

    def rows(key: str) -> torch.Tensor:  # every survivor's rows of ``key``, in agent order
        return torch.cat([f[key] for f in parts])[order]

    work = rows("work")  # (s, 3) samples, messages, bytes
    totals = dict(zip(("samples", "messages", "bytes"), work.unbind(1), strict=True))
    stacked = stack_states([f["state"] for f in parts], len(parts[0]["agents"]))
    everyone = own_rows(stacked, order.tolist(), len(held), job.x0.device)  # (s, ...)
    loss_sum, loss_count = (sum(f["loss"][k] for f in parts) for k in (0, 1))
    fields: dict[str, Any] = {"events": sum(f["events"] for f in parts)}
    centre = None
    if job.algorithm.partner == "neighbour":  # among survivors
        if audit:
            fields |= gossip_audit(parts, order, survivors, n, offsets[survivors][:, survivors])
    else:
        if audit:
            delivered = rows("delivered")  # (s, n + S): [k, j] k's to j
            fields["exchanges_unmatched"] = unapplied_exchanges(comm, delivered, survivors, offsets)
        fields |= staleness_fields(sum((f["staleness"] for f in parts), Counter()))
        centre = comm.centre()
    lost = sum(f["lost"] for f in parts)
    if job.fault_spec.any or crashed or lost:
        fields["exchanges_lost"] = lost
    if lost_at_crash is not None:
        fields["exchanges_lost_at_crash"] = int(lost_at_crash.abs().sum())
    rejoins = [f["rejoined"] for f in parts if f["rejoined"] is not None]
    if rejoins:  # each with what its donor says it handed over
        gifts = {(g["rank"], g["incarnation"]): g for f in parts for g in f["donated"]}
        for r in rejoins:
            gift = gifts.get((r["rank"], r["incarnation"]), {})
            r["donor_model_sum"] = gift.get("model_sum")
        fields["rejoins"] = rejoins
    judged = job
    if crashed:
        fields["crashed_ranks"] = list(crashed)
        judged = dataclasses.replace(job, shards=[job.shards[a] for a in survivors])
    loss = loss_sum / loss_count if loss_count else float("nan")
    buffers = stack_buffers([f["buffers"] for f in parts])
    if buffers is not None:
        buffers = {name: b[order.to(b.device)] for name, b in buffers.items()}
    snapshot = Snapshot(everyone.x, buffers, everyone, centre, fields, judged)
    return Counters(totals, None, loss, at), snapshot


def gossip_audit(
    parts: list[dict[str, Any]],
    order: torch.Tensor,
    survivors: list[int],
    n: int,
    offsets: torch.Tensor,
) -> dict[str, int]:
    """The final audit of the survivors' pairwise exchanges (``survivors``: the agents of
    ``parts``, ascending; ``order`` puts the parts' rows in that order):
    ``interactions_answered`` and ``interactions_unmatched = sum_k,j |delivered_k[j] -
    answered_j[k] - offsets|``, each count taken only where it is of the incarnations
    alive now (a rank that rejoined counts afresh, :mod:`.gossip`)."""
    now = torch.zeros(n, dtype=torch.int64)
    for f in parts:
        now[f["agents"]] = f["incarnation"]

    def current(key: str, met: str) -> torch.Tensor:  # (s, n): [k, j] k's counts of j
        counts = torch.cat([f[key][:, :n] for f in parts])[order]
        return counts.masked_fill(torch.cat([f[met][:, :n] for f in parts])[order] != now, 0)

    sent = current("delivered", "delivered_met")[:, survivors]
    got = current("answered", "answered_met")
    unmatched = (sent.T - got[:, survivors] - offsets).abs().sum()
    return {"interactions_answered": int(got.sum()), "interactions_unmatched": int(unmatched)}


def unapplied_exchanges(
    comm: DistCommunicator, delivered: torch.Tensor, workers: list[int], offsets: torch.Tensor
) -> int:
    """``sum_s sum_w |delivered_w[s] - applied_s[w] - offsets[s, w]|`` over ``workers``:
    exchanges a server lost or doubled, but those lost at a resumed crash. Row ``k`` of
    ``delivered`` counts worker ``workers[k]``'s requests that reached each server ``s``
    (column ``n + s``)."""
    assert comm.rpc is not None
    off = 0
    for s, rank in enumerate(comm.server_ranks):
        applied = comm.rpc.remote(rank, "centre").rpc_sync("counts")
        column = comm.n_agents + s
        off += sum(
            abs(int(delivered[k, column]) - applied.get(w, 0) - int(offsets[column, w]))
            for k, w in enumerate(workers)
        )
    return off
