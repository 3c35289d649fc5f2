"""One process of the rpc pattern tests (``test_rpc.py``).

``python -m torch.distributed.run --nproc-per-node N rpc_worker.py count SPEC OUT``:
each rank joins a gloo process group (torchrun's environment), then an rpc session
beside it (``SPEC["store"]``: ``"shared"`` rendezvouses in torchrun's store at
``MASTER_PORT``, ``"port"`` in a store of its own on ``SPEC["port"]``). Rank 0 hosts a
:class:`~rpc_mailbox.Mailbox`; every rank ``s`` in ``SPEC["plan"]`` posts its messages
to it with ``rpc_async``, all in flight at once, counting them (:class:`~rpc_mailbox.Counted`),
and waits for them. The senders' own counts then travel to rank 0 over the gloo group.
Rank 0 checks them against the plan and the mailbox and writes ``OUT/result.json``;
every rank writes ``OUT/pid.<rank>`` so the test can check that no process is left.

``python rpc_worker.py die OUT`` (plain processes, launcher's environment set by the
test): the ranks meet in a store on ``MASTER_PORT``, open an rpc session with a
store of its own on ``MASTER_PORT + 1`` and a 5 s timeout; rank 2 then leaves
without shutting down; ranks 0 and 1 call it, shut down, and write what they saw
(errors, seconds) to ``OUT/die.<rank>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from rpc_mailbox import Counted, Mailbox, Tally

from nettrain.engines.distributed.rpc import rpc_session
from nettrain.errors import PeerError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}


def tensors(message: list[list]) -> list[torch.Tensor]:
    """The tensors of one planned message ``[[numel, dtype], ...]``, filled with their index."""
    return [torch.arange(numel).to(DTYPES[dtype]) for numel, dtype in message]


def count(spec: dict, out: Path) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    (out / f"pid.{rank}").write_text(str(os.getpid()))
    store = None
    if spec["store"] == "shared":  # a client of torchrun's store, where the group met too
        addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        store = dist.TCPStore(addr, port, world, False, timedelta(seconds=60))
    plan = spec["plan"].get(str(rank), [])
    mailbox, sent = Mailbox(), Tally()
    errors: dict[str, str] = {}
    started = time.perf_counter()
    with rpc_session(rank, world, store=store, master_port=spec.get("port"), timeout_s=30) as s:
        if rank == 0:
            s.host("mailbox", mailbox)
        box = Counted(s.remote(0, "mailbox"), sent)
        futures = [box.rpc_async("post", rank, *tensors(message)) for message in plan]
        replies = s.wait(futures, "posting to the mailbox")
        total = sent.total()
        mine = {"messages": total.messages, "bytes": total.bytes, "replied_bytes": sum(replies)}
        senders: list[dict] = [{} for _ in range(world)]
        dist.all_gather_object(senders, mine)  # the gloo group, while rpc is up
        during = mailbox.received()
        try:
            s.remote(world, "mailbox")
        except ValueError as err:
            errors["no_such_rank"] = str(err)
    try:
        box.rpc_async("post", rank, torch.ones(1))
    except PeerError as err:
        errors["after_shutdown"] = str(err)
    seconds = time.perf_counter() - started
    dist.barrier()  # the group still works after the rpc shutdown
    if rank == 0:
        after = mailbox.received()
        result = {
            "senders": senders,
            "during": {str(k): [v.messages, v.bytes] for k, v in during.items()},
            "after": {str(k): [v.messages, v.bytes] for k, v in after.items()},
            "errors": errors,
            "seconds": seconds,
        }
        for sender, messages in spec["plan"].items():
            expected = sum(n * DTYPES[d].itemsize for m in messages for n, d in m)
            got = result["during"][sender]
            assert got == [len(messages), expected], (sender, got, len(messages), expected)
            assert senders[int(sender)]["messages"] == len(messages)
            assert senders[int(sender)]["bytes"] == expected
        assert result["after"] == result["during"]
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def die(out: Path) -> None:
    """Ranks 0..2 of plain processes; rank 2 vanishes once the session is up."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    port = int(os.environ["MASTER_PORT"])
    # Meet first, with a generous timeout: a slow start must not eat the short rpc one.
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timedelta(seconds=60))
    store.set(f"up/{rank}", "1")
    store.wait([f"up/{r}" for r in range(world)])
    seen: dict[str, object] = {}
    started = time.perf_counter()
    try:
        rpc_port = int(os.environ["RPC_PORT"])  # a free port the test chose, not port + 1
        with rpc_session(rank, world, master_port=rpc_port, timeout_s=5) as s:
            s.host("mailbox", Mailbox())
            if rank == 2:  # once the others surely left init_rpc: gone, without shutdown
                time.sleep(0.5)
                os._exit(0)
            time.sleep(1.5)
            try:
                s.remote(2, "mailbox").rpc_sync("post", rank, torch.ones(4))
                seen["call"] = "returned"
            except PeerError as err:
                seen["call"] = str(err)
    except PeerError as err:
        seen["shutdown"] = str(err)
    seen["seconds"] = time.perf_counter() - started
    (out / f"die.{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    if sys.argv[1] == "count":
        count(json.loads(sys.argv[2]), Path(sys.argv[3]))
    else:
        die(Path(sys.argv[2]))
