"""Several API processes behind the balancer: each new connection goes to the next process in
turn, a process that has exited is skipped, a stop refuses new connections and keeps the open
ones. Real API processes (``python -m activeseg.admin.balancer``) on an embedded data folder,
real connections; which process holds a connection is read from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from activeseg.admin.balancer import Balancer, api_process_argv
from tests.admin.test_serve_signals import _cmdline, alive, kill_all, process_tree, serve_env
from tests.conftest import free_port

START_TIMEOUT_S = 120.0
"""Importing the app in two processes at once, on a 2-core machine shared by others."""


class Conn:
    """One keep-alive HTTP/1.1 connection, spoken by hand: its client port is known."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.port = int(self.sock.getsockname()[1])

    def get(self, path: str) -> int:
        """The status of ``GET path``, its body read (the connection stays open)."""
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        status = int(self.file.readline().split()[1])
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        self.file.read(length)
        return status

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def holder(server_port: int, conn: Conn, pids: list[int]) -> int:
    """The pid among ``pids`` that holds the server end of ``conn`` (from /proc)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (
            server_port,
            conn.port,
        ):
            inode = fields[9]
    assert inode is not None, f"no server socket for the client port {conn.port}"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError(f"no API process holds socket {inode}")


class Processes:
    def __init__(self, balancer: Balancer, procs: list[subprocess.Popen[bytes]]) -> None:
        self.balancer, self.procs = balancer, procs
        self.url = f"http://127.0.0.1:{balancer.port}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def connect(self) -> Conn:
        """A new keep-alive connection that has been answered once."""
        conn = Conn(self.balancer.port)
        assert conn.get("/health") == 200
        return conn


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Processes]:
    balancer = Balancer("127.0.0.1", free_port(), 2)
    env = serve_env(tmp_path / "data", log_level="WARNING")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for k in range(2):
            fd = balancer.channel_fd(k)
            procs.append(
                subprocess.Popen(api_process_argv(fd, 5, "warning"), pass_fds=(fd,), env=env)
            )
            balancer.started(k)
        balancer.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(balancer.ready(k) for k in range(2)):
            assert all(p.poll() is None for p in procs), "an API process exited at start"
            assert time.monotonic() < deadline, "the API processes did not start"
            time.sleep(0.05)
        yield Processes(balancer, procs)
    finally:
        balancer.stop()
        for p in procs:
            p.kill()
            p.wait(timeout=30)
        balancer.close()


def test_each_new_connection_goes_to_the_next_process_and_stays_there(two: Processes) -> None:
    clients = []
    for k in range(6):
        clients.append(two.connect())
        assert two.balancer.handed == [k // 2 + 1, (k + 1) // 2]
    for k, client in enumerate(clients):
        assert holder(two.balancer.port, client, two.pids) == two.pids[k % 2]
        assert client.get("/health") == 200  # the same connection, kept alive
        assert holder(two.balancer.port, client, two.pids) == two.pids[k % 2]
        client.close()
    assert two.balancer.handed == [3, 3]  # no request opened another connection


def test_a_process_that_exited_is_skipped(two: Processes) -> None:
    first = two.connect()
    two.procs[1].kill()
    two.procs[1].wait(timeout=30)
    clients = [two.connect() for _ in range(4)]  # not one is refused or reset
    assert two.balancer.handed == [5, 0]
    assert {holder(two.balancer.port, c, two.pids[:1]) for c in [first, *clients]} == {two.pids[0]}
    for c in [first, *clients]:
        c.close()


def test_a_stopped_balancer_refuses_new_connections_and_keeps_the_open_ones(
    two: Processes,
) -> None:
    kept = two.connect()
    two.balancer.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{two.url}/health", timeout=5)
    assert kept.get("/health") == 200
    kept.close()


@pytest.mark.slow
def test_activeseg_api_with_two_processes_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The command compose runs: ready once both processes serve, the connections are shared
    out, and SIGTERM ends the command and both processes (exit 0)."""
    port = free_port()
    log = tmp_path / "api.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "activeseg.cli", "api", "--port", str(port), "--processes", "2",
         "--stop-grace", "5"],
        env=serve_env(tmp_path / "data"),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    seen: set[tuple[int, int]] = set()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "activeseg is ready" not in log.read_text(errors="replace"):
            seen |= process_tree(proc.pid)
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        tree = process_tree(proc.pid)
        seen |= tree
        api = [pid for pid, _ in tree if b"activeseg.admin.balancer" in _cmdline(pid)]
        assert len(api) == 2
        clients = [Conn(port) for _ in range(4)]
        for c in clients:
            assert c.get("/health") == 200
        holders = [holder(port, c, api) for c in clients]
        assert sorted(holders) == sorted(api * 2)
        for c in clients:
            c.close()
        # Both processes count their requests in one multiprocess metrics folder.
        assert any((tmp_path / "data" / "prometheus").glob("*.db"))
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 60
        while any(alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in tree)
        assert log.read_text().rstrip().endswith("activeseg stopped")
    finally:
        kill_all(seen)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
