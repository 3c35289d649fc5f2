"""The rendezvous store listens on master_addr only: loopback unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port
from nettrain.engines.distributed import store as store_module
from nettrain.engines.distributed.store import (
    is_loopback,
    keep_on_loopback,
    open_store,
    warn_if_reachable,
)
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


def test_a_run_reachable_from_the_network_says_so_once(monkeypatch, capsys) -> None:
    """Not loopback: one warning per address on stderr, pointing at docs/security.md;
    loopback: none. The hosting side of the store asks for it."""
    monkeypatch.setattr(store_module, "_warned", set())
    assert not warn_if_reachable("127.0.0.1") and not warn_if_reachable("localhost")
    assert capsys.readouterr().err == ""
    assert warn_if_reachable("10.1.2.3")
    err = capsys.readouterr().err
    assert "listens on 10.1.2.3" in err and "authenticate no one" in err
    assert "docs/security.md" in err
    assert not warn_if_reachable("10.1.2.3")  # once
    assert warn_if_reachable("192.168.0.7")  # another address: said again
    asked: list[str] = []
    monkeypatch.setattr(store_module, "warn_if_reachable", asked.append)
    open_store("127.0.0.1", free_port(), 1, True, timeout_s=5)
    assert asked == ["127.0.0.1"]


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_a_run_of_several_processes_listens_on_loopback_only(tmp_path: Path) -> None:
    """``nettrain run engine=distributed nproc=3`` starts its ranks itself: while it runs,
    the only socket listening on ``master_port`` is the launcher's store on 127.0.0.1
    (torchrun's agent would listen on every interface), and every rank exits with 0."""
    port = free_port()
    command = [sys.executable, "-m", "nettrain", "run", "engine=distributed", "nproc=3"]
    command += ["agents=3", "algorithm=swarm", "dataset=digits", "hidden=8", "rounds=300"]
    command += ["eval_every=300", "progress=false", f"master_port={port}", "timeout_s=60"]
    command += ["--out", str(tmp_path / "run")]
    log = tmp_path / "log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=sink)
        seen: set[str] = set()
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= listening_addresses(port)
            time.sleep(0.02)
        proc.kill()
    assert proc.wait() == 0, log.read_text()[-4000:]
    assert seen == {"0100007F"}  # 127.0.0.1 only, and seen listening
    assert (tmp_path / "run" / "final.pt").exists()
