"""The rendezvous store listens on master_addr only: loopback unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import free_port
from nettrain.engines.distributed.store import is_loopback, keep_on_loopback, open_store
from nettrain.errors import ConfigError


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                found.add(addr)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_the_hosted_store_listens_on_loopback_only() -> None:
    port = free_port()
    store = open_store("127.0.0.1", port, 1, True, timeout_s=5)
    store.set("k", "v")
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 or ::
    client = open_store("127.0.0.1", port, 1, False, timeout_s=5)
    assert client.get("k") == b"v"


def test_a_port_in_use_is_a_clear_error() -> None:
    port = free_port()
    first = open_store("127.0.0.1", port, 1, True, timeout_s=5)
    with pytest.raises(ConfigError, match="choose another master_port="):
        open_store("127.0.0.1", port, 1, True, timeout_s=5)
    del first


def test_local_runs_point_gloo_and_tensorpipe_at_loopback(monkeypatch) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("10.0.0.5") and not is_loopback("node7")
    for name in ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME"):  # restored after the test
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    keep_on_loopback("10.0.0.5")
    assert "GLOO_SOCKET_IFNAME" not in os.environ
    keep_on_loopback("127.0.0.1")
    if Path("/sys/class/net/lo").exists():
        assert os.environ["GLOO_SOCKET_IFNAME"] == os.environ["TP_SOCKET_IFNAME"] == "lo"
