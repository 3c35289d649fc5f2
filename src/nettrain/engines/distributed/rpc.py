"""The asynchronous pattern: objects hosted by one process, called by the others over RPC.

The synchronous patterns (:mod:`~nettrain.engines.distributed.comm`) are collectives
every rank enters together. Parameter servers (EASGD, DOWNPOUR) and pairwise gossip
(SwarmSGD, AD-PSGD) need the opposite: a process *hosts* an object (a centre
variable, a model to average with) and any other process calls one of its methods
whenever it likes, without the host taking part. This module gives that on
``torch.distributed.rpc`` with its TensorPipe backend::

    with rpc_session(rank, n, store=store, timeout_s=60) as session:
        if rank == 0:
            session.host("centre", centre)
        shard = session.remote(0, "centre")
        session.wait([shard.rpc_async("exchange", rank, x) for x in xs], "the exchanges")
    # here every call of every rank has finished; rank 0 may read centre

Every rank knows the names in advance (e.g. ``"centre/3"``), so no handle has to be
passed around (unlike ``rpc.RRef``). A call runs on the host's RPC thread pool,
``num_worker_threads`` calls at once while the host's own main thread goes on: a
hosted object must guard its state with a lock. Tensors arrive as fresh copies, never
aliasing the sender's. A call that arrives before its name is hosted waits for it, at
most ``timeout_s``. RPC pickles a tensor with its whole storage, so send
contiguous tensors that own their storage (``.clone()`` a slice), or the wire carries
more than the caller counts.

Rendezvous, beside a process group: ``rpc.init_rpc`` builds its own TensorPipe agent
and its own internal gloo group, so it works next to the default process group and
never touches it; only the rendezvous store can be shared. ``init_rpc`` accepts a URL,
not a store, and with ``tcp://`` or ``env://`` it decides from the environment who
hosts the store: under torchrun (``TORCHELASTIC_USE_AGENT_STORE=True``) every rank
connects as a client, which works on torchrun's ``MASTER_PORT`` and hangs on any other
port (no server ever comes; the store's default timeout is 30 minutes); launched
otherwise, rank 0 opens a second server on the port, which fails (``EADDRINUSE``)
where the process group's store already holds it (checked with torch 2.13).
:func:`rpc_session` therefore rendezvouses through its own URL scheme, handing
``init_rpc`` exactly the store chosen there.

What crosses the wire: a call is the hosted object's name, the method's name and its
arguments; a call and its reply carry only tensors (and dtypes), numbers, strings,
None, and tuples, lists, dicts and dataclasses (a compressor's payload) of them
(:func:`plain`, checked on both sides before anything is sent), never an object of
the user's configuration.
RPC itself authenticates no one and unpickles what arrives (docs/security.md).

Members that come back (``dynamic=True``): a static group (``init_rpc`` given its
``world_size``, the default) holds exactly the ranks that opened it, so a process
restarted after a crash cannot take its old place. A dynamic group (``world_size`` not
given to ``init_rpc``) lets ranks join while the others run. Every rank of such a group
opens its session in rank order (each waits for the one before, so that no two join at
once). A rank that comes back (``incarnation`` k > 0) joins under its old name with RPC
id ``rank + k * world_size`` (TensorPipe keys its connections by id, and the old
connection is broken), after :func:`_forget` took its old incarnation, and every member
whose heartbeat stopped (``gone``), off the group's list in the store; it then tells
every member to drop the old incarnation and reach the new one (:func:`_rejoined`), since
a member that still knows the old one would send on its broken connection. Checked with
torch 2.13, whose dynamic groups keep that list under ``names/_ALL_WORKER_INFOS``; each
process opens one rpc session per run (RPC prefixes its keys with a per-process count).
A dynamic session always ends with the local shutdown: the graceful one of a dynamic
group calls every member, the dead included.

Transport between processes of one machine (``transport``): TensorPipe's default
reaches a process of the same machine through shared memory (``shm``), whose reactor
thread polls without sleeping, so that a process computing while it waits for a call
keeps two cores busy. Where the machine's cores are fewer than twice its ranks those
threads take the cores the ranks compute on: 4 processes on 2 cores took 5 to 19 ms a
call carrying 2,410 floats with ``shm``, 1.1 to 1.6 ms over TCP (``uv``), measured side
by side; 2 processes of AD-PSGD (8 agents, 300 rounds) on 2 cores trained in 2.8 to
3.5 s either way on an idle machine, but in 6.2 to 7.6 s with ``shm`` against 4.2 to
4.5 s with ``uv`` beside two other busy processes. ``transport="auto"``
(:func:`transports`) therefore offers only ``uv`` then; between machines TensorPipe
uses ``uv`` anyway.

Shutdown: leaving the ``with`` block normally is a graceful ``rpc.shutdown``: it
returns once every rank has left its block and every call in flight, anywhere, has
finished, so the host may read its objects afterwards. It waits at most
``timeout_s`` for a rank that is gone and then raises :class:`~nettrain.errors.PeerError`. Where the
caller knows that a rank is gone and that nothing is in flight any more (the engine's
asynchronous runs agree on that in the store, see
:mod:`~nettrain.engines.distributed.finish`), it sets :attr:`RpcSession.graceful` to
False: the block then ends with the local shutdown, which waits for nobody. Leaving on
an exception shuts the local agent down at once (peers then fail fast instead of
waiting) and re-raises. Either way the RPC threads are stopped and this process's
hosted names are dropped, so the process exits without hanging and a new session can
start.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import parse_qsl, urlparse

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc
from torch.distributed.rendezvous import register_rendezvous_handler
from torch.futures import Future

from nettrain.engines.distributed.store import keep_on_loopback, open_store
from nettrain.errors import PeerError
from nettrain.machine import usable_cores

SCHEME = "nettrain-rpc"  # init_rpc's URL scheme for a store chosen by rpc_session
STORE_PREFIX = "nettrain-rpc"  # keys of RPC's rendezvous in a shared store
RPC_PORT_OFFSET = 1  # own store: MASTER_PORT + 1, next to the process group's
DEFAULT_MASTER_PORT = 29512  # the engine's default MASTER_PORT
REMOTE_MARK = "On WorkerInfo("  # in the message of an exception raised by the callee


def agent_name(rank: int) -> str:
    """The RPC worker name of ``rank``: ``agent<rank>``."""
    return f"agent{rank}"


def default_rpc_port() -> int:
    """``MASTER_PORT + 1``: the port of RPC's own store when no store is shared."""
    return int(os.environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)) + RPC_PORT_OFFSET


def peer_error(rank: int | str, what: str, err: BaseException) -> PeerError:
    """The error of ``rank``'s ``what`` that failed with ``err`` in transit: a peer died or
    did not answer in time."""
    return PeerError(
        f"rank {rank}: {what} failed: {str(err).strip()}. Another process of the run "
        "probably died or stopped answering (see its own error); raise timeout_s= if it "
        "was only slow"
    )


class _Registry:
    """This process's hosted objects by name; a lookup waits for a name not yet hosted."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._objects: dict[str, Any] = {}
        self.wait_s = 60.0

    def host(self, name: str, obj: Any) -> None:
        with self._ready:
            if name in self._objects:
                raise ValueError(f"an object is already hosted here as {name!r}")
            self._objects[name] = obj
            self._ready.notify_all()

    def drop(self, names: Iterable[str]) -> None:
        with self._ready:
            for name in names:
                self._objects.pop(name, None)

    def get(self, name: str) -> Any:
        with self._ready:
            if not self._ready.wait_for(lambda: name in self._objects, self.wait_s):
                hosted = ", ".join(sorted(self._objects)) or "none"
                raise LookupError(
                    f"no object {name!r} hosted on this rank within {self.wait_s} s "
                    f"(hosted: {hosted})"
                )
            return self._objects[name]


_registry = _Registry()


PLAIN = (torch.Tensor, torch.dtype, bool, int, float, str, type(None))


def plain(value: Any) -> bool:
    """Whether ``value`` is what an rpc call or reply may carry: tensors (and dtypes),
    numbers, strings, None, and tuples, lists, dicts (of string or integer keys) and dataclass
    instances of them."""
    if isinstance(value, PLAIN):
        return True
    if isinstance(value, (tuple, list)):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and plain(v) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(plain(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def check_plain(value: Any, what: str) -> Any:
    """``value``, or a TypeError naming ``what`` if it is not :func:`plain`."""
    if not plain(value):
        raise TypeError(
            f"{what} may carry only tensors, numbers, strings, None and containers or "
            f"dataclasses of them, got {value!r:.200}"
        )
    return value


def _invoke(name: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run on the host by RPC: ``obj.method(*args, **kwargs)`` for the object hosted as ``name``."""
    reply = getattr(_registry.get(name), method)(*args, **kwargs)
    return check_plain(reply, f"the reply of {name}.{method}")


class Remote:
    """A handle to the object hosted as ``name`` on rank ``owner``."""

    def __init__(self, session: RpcSession, owner: int, name: str) -> None:
        self.session = session
        self.owner = owner
        self.name = name
        self.worker = session.name_of(owner)
        self.what = f"calling {name!r} on rank {owner}"  # for errors

    def rpc_async(self, method: str, *args: Any, **kwargs: Any) -> Future[Any]:
        """Start ``obj.method(*args, **kwargs)`` on the owner; a future of its result."""
        self.session.check_open(self.what)
        check_plain((args, kwargs), self.what)
        try:
            return rpc.rpc_async(self.worker, _invoke, args=(self.name, method, args, kwargs))
        except RuntimeError as err:
            raise peer_error(self.session.rank, self.what, err) from err

    def rpc_sync(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``obj.method(*args, **kwargs)`` on the owner, blocking until it returns."""
        return self.session.wait([self.rpc_async(method, *args, **kwargs)], self.what)[0]


class RpcSession:
    """This rank's view of an open RPC group: host objects, reach the others' objects.

    ``store`` is the rendezvous store (shared, or the session's own), ``serial`` the
    number of sessions this process opened before this one (the same on every rank that
    opens the same sessions: a key prefix that a reused store has not seen).
    ``graceful``: whether leaving the block waits for every rank (see the module
    docstring).
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        name_of: Callable[[int], str],
        store: dist.Store | None = None,
        serial: int = 0,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.name_of = name_of
        self.store = store
        self.serial = serial
        self.graceful = True
        self.hosted: list[str] = []
        self.open = True

    def host(self, name: str, obj: Any) -> None:
        """Make ``obj`` callable by every rank as ``remote(self.rank, name)``, until the end."""
        self.check_open(f"hosting {name!r}")
        _registry.host(name, obj)
        self.hosted.append(name)

    def remote(self, owner: int, name: str) -> Remote:
        """A handle to the object ``name`` hosted by rank ``owner``."""
        if not 0 <= owner < self.world_size:
            raise ValueError(
                f"rank {self.rank}: there is no rank {owner} to call {name!r} on; "
                f"the ranks are 0..{self.world_size - 1}"
            )
        return Remote(self, owner, name)

    def wait(self, futures: list[Future[Any]], what: str = "an rpc call") -> list[Any]:
        """The results of ``futures``, after every one of them is done.

        The first failure is raised then: a call that failed in transit (the peer is
        gone, or did not answer within ``timeout_s``) as a :class:`~nettrain.errors.PeerError`; an
        exception of the hosted method itself as RPC delivers it (its message starts
        ``On WorkerInfo(...)`` and carries the host's traceback).
        """
        results, first = [], None
        for future in futures:
            try:
                results.append(future.wait())
            except Exception as err:
                results.append(None)
                first = first or err
        if first is None:
            return results
        if isinstance(first, RuntimeError) and REMOTE_MARK not in str(first):
            raise peer_error(self.rank, what, first) from first
        raise first

    def check_open(self, what: str) -> None:
        if not self.open:
            raise PeerError(f"rank {self.rank}: {what} after the rpc session was shut down")


_stores: dict[str, dist.Store] = {}  # rendezvous stores handed to init_rpc, by token
_tokens = itertools.count()
_serials = itertools.count()  # sessions opened by this process


def _rendezvous(url: str, **kwargs: Any) -> Iterator[tuple[dist.Store, int, int]]:
    """``nettrain-rpc://<token>?rank=r&world_size=n``: the store that rpc_session chose."""
    parsed = urlparse(url)
    query = dict(parse_qsl(parsed.query))
    world = query.get("world_size")  # none for a dynamic group
    yield _stores[parsed.netloc], int(query["rank"]), int(world) if world else 0
    raise RuntimeError("an rpc_session cannot rendezvous twice")


with suppress(RuntimeError):  # registered already: this module was loaded twice
    register_rendezvous_handler(SCHEME, _rendezvous)


MEMBERS = "names/_ALL_WORKER_INFOS"  # a dynamic group's list "name-id,name-id," (torch 2.13)


def _forget(store: dist.Store, names: Iterable[str]) -> None:
    """Take ``names`` (every incarnation of each) off the list of a dynamic group whose
    keys ``store`` holds (``init_rpc``'s own prefix included), under the group's token."""
    from torch.distributed.rpc._utils import _group_membership_management

    names = set(names)
    with _group_membership_management(store, f"forget-{os.getpid()}", True):
        if not store.check([MEMBERS]):
            return
        kept = []
        for entry in store.get(MEMBERS).decode().split(","):
            if not entry:
                continue
            name, _, ident = entry.rpartition("-")
            if name in names:
                with suppress(RuntimeError):
                    store.delete_key(f"names/{ident}")
            else:
                kept.append(entry + ",")
        store.set(MEMBERS, "".join(kept))


def _rejoined(name: str, ident: int) -> None:
    """Run on a member by RPC: ``name`` is back as RPC id ``ident``; forget the
    incarnation known here, if older, and reach the new one."""
    from torch.distributed.rpc._utils import _update_group_membership

    agent = rpc.api._get_current_rpc_agent()
    with suppress(RuntimeError):  # a member that never knew the old one
        old = agent.get_worker_info(name)
        if old.id == ident:
            return
        _update_group_membership(old, [], {}, False)
    _update_group_membership(rpc.WorkerInfo(name, ident), [], {}, True)


_own_stores: dict[tuple[str, int, bool], dist.TCPStore] = {}

TRANSPORTS = ("auto", "shm", "uv")


def transports(choice: str) -> list[str] | None:
    """TensorPipe's transports for ``choice`` (module docstring, "Transport"): ``uv``
    alone for ``uv``, and for ``auto`` where this machine has several ranks
    (``LOCAL_WORLD_SIZE``) and fewer than two cores each that this process may run on;
    None (TensorPipe's default, shared memory first) otherwise."""
    if choice not in TRANSPORTS:
        raise ValueError(f"transport={choice!r}: choose one of {', '.join(TRANSPORTS)}")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    crowded = local > 1 and 2 * local > usable_cores()
    return ["uv"] if choice == "uv" or (choice == "auto" and crowded) else None


def _own_store(addr: str, port: int, server: bool, world_size: int, timeout_s: float) -> dist.Store:
    """The store on ``addr:port`` (served here if ``server``), one per process and port.

    RPC keeps its rendezvous store alive after ``rpc.shutdown``, so a second server on
    the port would fail; a later session reuses the store instead (``init_rpc`` puts
    each session's keys under a prefix of their own).
    """
    key = (addr, port, server)
    if key not in _own_stores:
        keep_on_loopback(addr)
        _own_stores[key] = open_store(addr, port, world_size, server, timeout_s)
    return _own_stores[key]


@contextmanager
def rpc_session(
    rank: int,
    world_size: int,
    *,
    store: dist.Store | None = None,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    timeout_s: float = 60.0,
    num_worker_threads: int = 8,
    name_of: Callable[[int], str] = agent_name,
    dynamic: bool = False,
    incarnation: int = 0,
    gone: Iterable[int] = (),
    transport: str = "auto",
) -> Iterator[RpcSession]:
    """Join the RPC group of ``world_size`` ranks as ``name_of(rank)``; shut it down at exit.

    ``store``: rendezvous in this existing store (the engine's rendezvous store, or a
    client of torchrun's at ``MASTER_PORT``) under the key prefix ``nettrain-rpc/``, no
    new port; ``init_rpc`` sets that store's timeout to ``timeout_s``. Else in a store of
    its own on ``master_addr:master_port``, hosted by rank 0; the port defaults to
    ``MASTER_PORT + 1`` (:func:`default_rpc_port`), next to the process group's.
    ``timeout_s`` bounds the rendezvous, every call and the shutdown's wait for the
    others. ``dynamic``: a group that ranks may rejoin, as ``incarnation`` k > 0 of
    ``rank`` (after the ranks ``gone`` are taken off it). See the module docstring for
    the semantics. ``transport``: between processes of one machine, ``shm``, ``uv`` or
    ``auto`` (:func:`transports`).
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if store is None:
        port = default_rpc_port() if master_port is None else master_port
        store = _own_store(master_addr, port, rank == 0, world_size, timeout_s)
    token = f"s{os.getpid()}-{next(_tokens)}"
    keys = _stores[token] = dist.PrefixStore(STORE_PREFIX, store)
    ident, group = rank + incarnation * world_size, None
    options = rpc.TensorPipeRpcBackendOptions(
        init_method=f"{SCHEME}://{token}",
        rpc_timeout=timeout_s,
        num_worker_threads=num_worker_threads,
        _transports=transports(transport),
    )
    session = RpcSession(rank, world_size, name_of, store, next(_serials))
    _registry.wait_s = timeout_s
    try:
        if dynamic:
            group = dist.PrefixStore(f"rpc_prefix_{rpc._init_counter}", keys)  # init_rpc's
            if incarnation:
                _forget(group, [name_of(r) for r in {rank, *gone}])
            elif rank:
                group.wait([f"opened/{rank - 1}"])
        with warnings.catch_warnings():  # init_rpc's own use of its internal gloo group
            warnings.filterwarnings("ignore", "You are using a Backend", UserWarning)
            rpc.init_rpc(
                name_of(rank),
                backend=rpc.BackendType.TENSORPIPE,
                rank=ident,
                world_size=None if dynamic else world_size,
                rpc_backend_options=options,
            )
        if group is not None:
            group.set(f"opened/{rank}", str(incarnation))
        if incarnation:
            me, members = name_of(rank), rpc.api._get_current_rpc_agent().get_worker_infos()
            calls = [rpc.rpc_async(w.name, _rejoined, (me, ident)) for w in members if w.name != me]
            for call in calls:
                call.wait()
    except RuntimeError as err:
        raise peer_error(rank, "joining the rpc group", err) from err
    finally:
        del _stores[token]
    try:
        yield session
    except BaseException:
        session.open = False
        rpc.shutdown(graceful=False)  # do not wait for peers: they fail fast instead
        raise
    else:
        session.open = False
        try:
            rpc.shutdown(graceful=session.graceful and not dynamic, timeout=timeout_s)
        except RuntimeError as err:
            raise peer_error(rank, "the rpc shutdown", err) from err
    finally:
        _registry.drop(session.hosted)
