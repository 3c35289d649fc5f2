"""The rpc pattern: a hosted mailbox counts exactly the messages and bytes sent to it.

Four torchrun processes on loopback (``rpc_worker.py``) with a gloo process group and
an rpc session side by side: rank 0 hosts a :class:`Mailbox`, ranks 1, 2 and 3 post 5,
7 and 11 messages of known sizes to it with ``rpc_async``, all in flight at once. The
mailbox must count exactly those, per sender, and the senders' own byte counts must
equal the receiver's; the launch must exit 0 in time and leave no process behind.
Both rendezvous modes are covered: the store shared with torchrun's, and a store of
the session's own on another port. Then: a rank that vanishes is a clear error on the
others, not a hang; and the same pattern in one process (world of one), with the
errors for a rank that does not exist and for a call after shutdown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from engines.distributed.rpc_mailbox import Counted, Counts, Mailbox, Tally, payload_bytes
from helpers import free_port, torchrun_command, wait_or_fail
from nettrain.engines.distributed.rpc import default_rpc_port, plain, rpc_session, transports
from nettrain.errors import PeerError

WORKER = Path(__file__).with_name("rpc_worker.py")
MESSAGES = {1: 5, 2: 7, 3: 11}  # sender rank -> messages it posts
DTYPES = ("float32", "float64", "int64")
ITEMSIZE = {"float32": 4, "float64": 8, "int64": 8}
LAUNCH_TIMEOUT_S = 120


def plan() -> dict[str, list[list[list]]]:
    """``{sender: [message, ...]}``, a message ``[[numel, dtype], ...]``: sizes all distinct.

    Every third message carries a second tensor, so a call may hold several tensors.
    """
    out = {}
    for s, count in MESSAGES.items():
        messages = []
        for k in range(count):
            message = [[1 + 100 * s + k, DTYPES[k % 3]]]
            if k % 3 == 2:
                message.append([2 * k + s, DTYPES[(k + 1) % 3]])
            messages.append(message)
        out[str(s)] = messages
    return out


def expected_bytes(messages: list[list[list]]) -> int:
    return sum(numel * ITEMSIZE[dtype] for message in messages for numel, dtype in message)


def gone(pid: int) -> bool:
    """Whether no process has ``pid`` as process id or as process group id."""
    for probe in (os.kill, os.killpg):
        try:
            probe(pid, 0)
            return False
        except ProcessLookupError:
            pass
    return True


@pytest.mark.parametrize("store", ["shared", "port"])
def test_the_mailbox_counts_exactly_what_was_sent(store: str, tmp_path: Path) -> None:
    master = free_port()
    spec: dict = {"store": store, "plan": plan()}
    if store == "port":
        spec["port"] = next(p for p in iter(free_port, None) if p != master)
    command = torchrun_command(
        4, str(WORKER), "count", json.dumps(spec), str(tmp_path), port=master
    )
    log = tmp_path / "torchrun.log"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:  # its own process group: nothing of it may outlive it
        proc = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_or_fail(proc, log, LAUNCH_TIMEOUT_S, kill=lambda: os.killpg(proc.pid, signal.SIGKILL))

    pids = [int((tmp_path / f"pid.{rank}").read_text()) for rank in range(4)]
    deadline = time.monotonic() + 5
    while not all(gone(pid) for pid in [proc.pid, *pids]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in [proc.pid, *pids]), "a process of the launch is left"

    result = json.loads((tmp_path / "result.json").read_text())
    want = {s: [len(m), expected_bytes(m)] for s, m in plan().items()}
    assert result["during"] == want  # received by rank 0, per sender
    assert result["after"] == want  # and nothing more arrived until the shutdown
    assert sum(v[0] for v in want.values()) == 5 + 7 + 11
    for s, (messages, nbytes) in want.items():
        sender = result["senders"][int(s)]
        assert sender == {"messages": messages, "bytes": nbytes, "replied_bytes": nbytes}
    assert result["senders"][0]["messages"] == 0
    assert "there is no rank 4" in result["errors"]["no_such_rank"]
    assert "after the rpc session was shut down" in result["errors"]["after_shutdown"]


def test_a_vanished_rank_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    """Rank 2 of 3 exits without shutting down: the others' calls and shutdown fail fast."""
    port, timeout_s = free_port(), 5  # the worker's rpc timeout
    rpc_port = next(p for p in iter(free_port, None) if p != port)  # the session's own store
    procs = []
    for rank in range(3):
        env = os.environ | {
            "RANK": str(rank),
            "WORLD_SIZE": "3",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RPC_PORT": str(rpc_port),
            "OMP_NUM_THREADS": "1",
        }
        with open(tmp_path / f"rank{rank}.log", "wb") as sink:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), "die", str(tmp_path)],
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        codes = [p.wait(timeout=LAUNCH_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    logs = "\n".join((tmp_path / f"rank{r}.log").read_text()[-2000:] for r in range(3))
    assert codes == [0, 0, 0], logs
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"die.{rank}.json").read_text())
        assert seen["call"].startswith(f"rank {rank}: calling 'mailbox' on rank 2 failed"), seen
        assert "probably died" in seen["call"]
        assert seen["shutdown"].startswith(f"rank {rank}: the rpc shutdown failed"), seen
        assert seen["seconds"] < 4 * timeout_s, seen


class Faulty:
    def post(self, sender: int) -> None:
        raise ValueError(f"bad sender {sender}")


def test_one_rank_hosts_and_calls_itself_and_errors_are_clear(monkeypatch) -> None:
    monkeypatch.setenv("MASTER_PORT", str(free_port() - 1))  # own store: MASTER_PORT + 1
    mailbox = Mailbox(keep=True)
    sent = Tally()  # what this rank's calls sent, by the rank called
    with rpc_session(0, 1, timeout_s=20, num_worker_threads=2) as session:
        session.host("mailbox", mailbox)
        session.host("faulty", Faulty())
        with pytest.raises(ValueError, match="already hosted"):
            session.host("mailbox", Mailbox())
        box = Counted(session.remote(0, "mailbox"), sent)
        futures = [box.rpc_async("post", 0, torch.zeros(k + 1)) for k in range(10)]
        assert session.wait(futures) == [4 * (k + 1) for k in range(10)]
        assert box.rpc_sync("post", 7, torch.zeros(2, dtype=torch.float64), torch.ones(3)) == 28
        with pytest.raises(ValueError, match=r"there is no rank 1 .* ranks are 0\.\.0"):
            session.remote(1, "mailbox")
        late = Counted(session.remote(0, "late"), sent)
        late_call = late.rpc_async("post", 3, torch.zeros(5))  # waits for it
        time.sleep(0.2)
        session.host("late", Mailbox())
        assert session.wait([late_call]) == [20]
        with pytest.raises(ValueError, match=r"(?s)On WorkerInfo.*bad sender 1"):  # its own error
            Counted(session.remote(0, "faulty"), sent).rpc_sync("post", 1)
    assert mailbox.received() == {0: Counts(10, 4 * 55), 7: Counts(1, 28)}
    assert sent.by_key() == {0: Counts(13, 4 * 55 + 28 + 20)}  # late and faulty too
    assert [s for s, _ in mailbox.kept()].count(0) == 10
    with pytest.raises(PeerError, match="rank 0: calling 'mailbox' on rank 0 after the rpc"):
        box.rpc_async("post", 0, torch.ones(1))


class Leaky:
    """Replies with an object of its own, which the pattern must not send back."""

    def post(self, sender: int) -> object:
        return Faulty()


def test_calls_and_replies_carry_plain_values_only(monkeypatch) -> None:
    """Tensors, numbers, strings and containers or dataclasses of them go through; any
    other object is refused before it is sent, as an argument or as a reply."""
    payload = Counts(1, 2)  # a dataclass of numbers, as a compressor's payload is
    assert plain((1, 2.0, True, None, "s", [torch.ones(1)], {"k": (payload,)}, {3: 4}))
    for bad in (Faulty(), lambda: 0, {object(): 1}, [Counts(1, Faulty())], Counts, b"bytes"):
        assert not plain(bad)
    monkeypatch.setenv("MASTER_PORT", str(free_port() - 1))
    with rpc_session(0, 1, timeout_s=20) as session:
        session.host("mailbox", Mailbox())
        session.host("leaky", Leaky())
        box = session.remote(0, "mailbox")
        with pytest.raises(TypeError, match="calling 'mailbox' on rank 0 may carry only"):
            box.rpc_async("post", 0, Faulty())
        with pytest.raises(TypeError, match=r"(?s)the reply of leaky\.post may carry only"):
            session.remote(0, "leaky").rpc_sync("post", 0)
        assert box.rpc_sync("post", 0, torch.ones(2)) == 8


def test_an_exception_inside_the_session_shuts_down_and_propagates(monkeypatch) -> None:
    monkeypatch.setenv("MASTER_PORT", str(free_port() - 1))
    with pytest.raises(KeyError, match="boom"), rpc_session(0, 1, timeout_s=20) as session:
        session.host("x", Mailbox())
        raise KeyError("boom")
    with pytest.raises(PeerError, match="after the rpc session was shut down"):
        session.host("y", Mailbox())
    with rpc_session(0, 1, timeout_s=20) as again:  # a new session on the same store
        again.host("x", Mailbox())
        assert again.remote(0, "x").rpc_sync("post", 0, torch.ones(2)) == 8


def test_payload_bytes_counts_every_tensor_in_nested_arguments() -> None:
    args = (1, torch.zeros(3), [torch.zeros(2, dtype=torch.float64), "x"], {"k": torch.zeros(4)})
    assert payload_bytes(args) == 12 + 16 + 16
    assert payload_bytes(torch.zeros(0)) == 0


def test_the_mailbox_counts_concurrent_posts_exactly() -> None:
    mailbox = Mailbox()

    def post(sender: int) -> None:
        for _ in range(500):
            mailbox.post(sender, torch.zeros(sender + 1))

    threads = [threading.Thread(target=post, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mailbox.received() == {s: Counts(500, 500 * 4 * (s + 1)) for s in range(4)}
    assert mailbox.tally.total() == Counts(2000, 500 * 4 * 10)


def test_the_own_store_is_next_to_the_process_groups(monkeypatch) -> None:
    monkeypatch.setenv("MASTER_PORT", "29600")
    assert default_rpc_port() == 29601
    with pytest.raises(ValueError, match="timeout_s must be > 0"), rpc_session(0, 1, timeout_s=0):
        pass


def test_transport_auto_leaves_shared_memory_without_two_cores_a_process(monkeypatch) -> None:
    """``auto``: TCP alone (``uv``) where this machine's ranks have fewer than two of the
    cores this process may use each (shared memory's poller takes one), TensorPipe's
    default (None) otherwise and for a lone process; ``uv`` and ``shm`` as given."""
    monkeypatch.setattr("nettrain.engines.distributed.rpc.usable_cores", lambda: 8)
    for local, expected in ((5, ["uv"]), (4, None), (2, None), (1, None)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
        assert transports("auto") == expected, local
        assert transports("uv") == ["uv"] and transports("shm") is None
    monkeypatch.setattr("nettrain.engines.distributed.rpc.usable_cores", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert transports("auto") == ["uv"]
    monkeypatch.setattr("nettrain.engines.distributed.rpc.usable_cores", lambda: 1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert transports("auto") is None  # one process: no other on its machine
    with pytest.raises(ValueError, match="choose one of auto, shm, uv"):
        transports("tcp")
