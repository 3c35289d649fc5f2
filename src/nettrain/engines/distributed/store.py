"""Rendezvous stores and sockets that listen only where they are told (loopback by default).

``torch.distributed.TCPStore`` listens on every interface whatever host it is given,
and gloo and TensorPipe pick an interface from the host name. A run on one machine
(``master_addr=127.0.0.1``, the default) should not be reachable from the network:
the store's host binds its socket to ``master_addr`` itself and hands it over
(``master_listen_fd``), and gloo and TensorPipe are pointed at the loopback
interface (``GLOO_SOCKET_IFNAME``, ``TP_SOCKET_IFNAME``) unless the user set them.
Set ``master_addr`` to an address other machines can reach to train across machines;
rank 0 then says once, on stderr, that the ports it opens authenticate no one
(:func:`warn_if_reachable`, docs/security.md).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from datetime import timedelta

import torch.distributed as dist

from nettrain.errors import ConfigError

LOOPBACK_INTERFACE = "lo"


def is_loopback(addr: str) -> bool:
    """Whether ``addr`` (an IP address or ``localhost``) is this machine's loopback."""
    if addr == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


REACHABLE_WARNING = (
    "nettrain: this run listens on {addr}, which other machines can reach. The rendezvous "
    "store, gloo and the rpc pattern authenticate no one, and the rpc pattern unpickles what "
    "peers send: whoever reaches these ports can join the run or run code in it. Run on a "
    "private network or through a tunnel, with the ports closed to others (docs/security.md)"
)
_warned: set[str] = set()


def warn_if_reachable(addr: str) -> bool:
    """Say once per process and address, on stderr, that a run listening on ``addr``
    (not loopback) is open to whoever reaches it; whether this call said it."""
    if is_loopback(addr) or addr in _warned:
        return False
    _warned.add(addr)
    print(REACHABLE_WARNING.format(addr=addr), file=sys.stderr, flush=True)
    return True


HOSTED = "NETTRAIN_STORE_HOSTED"  # "1": the launcher hosts the store, no rank does


def hosts_store(rank: int) -> bool:
    """Whether rank ``rank`` hosts the rendezvous store: rank 0, unless a launcher hosts
    it: nettrain's own (``NETTRAIN_STORE_HOSTED=1``, so that the store outlives any rank)
    or torchrun's agent (``TORCHELASTIC_USE_AGENT_STORE=True``)."""
    launcher = os.environ.get(HOSTED) == "1"
    return rank == 0 and not launcher and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"


def keep_on_loopback(addr: str) -> None:
    """Point gloo and TensorPipe at the loopback interface when the run is local."""
    if is_loopback(addr) and os.path.exists(f"/sys/class/net/{LOOPBACK_INTERFACE}"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)
        os.environ.setdefault("TP_SOCKET_IFNAME", LOOPBACK_INTERFACE)


def open_store(addr: str, port: int, world: int, host: bool, timeout_s: float) -> dist.TCPStore:
    """A TCPStore client of ``addr:port``, or with ``host`` its server, listening on
    ``addr`` only (not on every interface)."""
    timeout = timedelta(seconds=timeout_s)
    if not host:
        return dist.TCPStore(addr, port, world, False, timeout, wait_for_workers=False)
    warn_if_reachable(addr)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((addr, port))
    except OSError as err:
        listener.close()
        raise ConfigError(
            f"cannot listen on {addr}:{port} for the rendezvous ({err.strerror}); choose "
            "another master_port=, or a master_addr= of this machine"
        ) from None
    listener.listen(256)
    return dist.TCPStore(
        addr, port, world, True, timeout, wait_for_workers=False, master_listen_fd=listener.detach()
    )
