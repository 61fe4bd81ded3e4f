"""A minimal HTTP/1.1 keep-alive client for the load generators, and the CPU each side used.

httpx costs about 2.5 ms of CPU per request here (measured: 0.3 of the 2 cores at 114
requests/s), as much as a quarter of what the server spends on the same request. On a 2-core
machine where server, PostgreSQL and load generator share the cores, that cost is taken from
the server and caps what a benchmark can show. A labelling tool runs on other machines, so the
load generator should cost next to nothing: this client writes one pre-built request per call
on one connection and reads a ``Content-Length`` answer, nothing more (no redirects, cookies,
chunked bodies or TLS; an answer it cannot read is an error, never a guess).

:class:`CpuMeter` reads ``/proc`` over a measured span: the cores the server processes, the
PostgreSQL backends and this process kept busy, and the whole machine's busy share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_TICK = os.sysconf("SC_CLK_TCK")


class LeanClient:
    """One keep-alive connection to ``url`` (``http://host:port``) sending ``headers`` with
    every request. Not safe for concurrent use: one client per simulated annotator."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        timeout: float = 60.0,
        keepalive_expiry: float = 4.0,
    ) -> None:
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.hostname and parts.port, url
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        # uvicorn closes a connection idle for 5 s: one idle longer than this is dropped
        # first and a new one opened (as browsers do), never written into a closing one.
        self.keepalive_expiry, self._last_used = keepalive_expiry, 0.0
        fixed = {"Host": f"{self.host}:{self.port}", **headers}
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """``(status, body)``; ``body`` (if given) is sent as JSON."""
        return await asyncio.wait_for(self._request(method, path, body), self.timeout)

    async def post(self, path: str, body: Any = None) -> tuple[int, bytes]:
        return await self.request("POST", path, body)

    async def _request(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        data = b"" if body is None else json.dumps(body).encode()
        kind = "Content-Type: application/json\r\n" if body is not None else ""
        raw = (
            f"{method} {path} HTTP/1.1\r\n{self._head}{kind}Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data
        if self._writer is not None and time.monotonic() - self._last_used > self.keepalive_expiry:
            await self.aclose()
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                raise RuntimeError(f"{method} {path}: a {value.strip()} answer; not supported")
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self._reader.readexactly(length) if length else b""
        self._last_used = time.monotonic()
        if close:
            await self.aclose()
        return status, payload

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


class HttpxClient:
    """The same calls as :class:`LeanClient` over httpx (the load generators' client before
    it), one connection, for comparison runs."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        timeout: float = 60.0,
        keepalive_expiry: float = 4.0,
    ) -> None:
        import httpx

        limits = httpx.Limits(max_connections=1, keepalive_expiry=keepalive_expiry)
        self._client = httpx.AsyncClient(
            base_url=url, headers=headers, timeout=timeout, limits=limits
        )

    async def post(self, path: str, body: Any = None) -> tuple[int, bytes]:
        r = await self._client.post(path, json=body)
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self._client.aclose()


CLIENTS = {"lean": LeanClient, "httpx": HttpxClient}


def add_client_option(parser: argparse.ArgumentParser) -> None:
    """``--client lean|httpx``, the load generator's HTTP client."""
    parser.add_argument(
        "--client",
        choices=tuple(CLIENTS),
        default="lean",
        help="HTTP client of the load generator (lean_http: a fraction of httpx's CPU)",
    )


def open_client(kind: str, url: str, token: str) -> LeanClient | HttpxClient:
    """A ``kind`` client (see :data:`CLIENTS`) to ``url`` that sends ``token``."""
    return CLIENTS[kind](url, {"Authorization": f"Bearer {token}"})


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _resource_tracker(pid: int) -> bool:
    """Whether ``pid`` is multiprocessing's resource tracker (a child of uvicorn --workers N
    beside its workers, idle)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resource_tracker" in f.read()
    except OSError:
        return False


def _postgres_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() in ("postgres", "postmaster"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


ESTABLISHED, LISTEN = "01", "0A"  # TCP states as /proc/net/tcp writes them


def tcp_sockets(port: int, state: str) -> set[str]:
    """Socket inodes of the TCP sockets in ``state`` whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == state and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def _sockets_held(pid: int, inodes: set[str]) -> int:
    """How many of the socket ``inodes`` process ``pid`` holds open."""
    held = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            held += 1
    return held


def _machine() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot (steal and iowait count as not busy)."""
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    idle = cpu[3] + cpu[4] + (cpu[7] if len(cpu) > 7 else 0)
    return sum(cpu) - idle, sum(cpu)


@dataclass
class CpuShare:
    seconds: float
    server: float  # cores kept busy on average
    postgres: float
    generator: float
    machine: float  # busy share of all cores, 0..1
    # Cores kept busy by each of the server's worker processes, busiest first: one Python
    # process uses about one core at most, so an uneven share of the clients caps the rate.
    workers: tuple[float, ...] = ()
    # The clients' connections each of those processes held at the end of the span (same
    # order; the kernel hands a new connection to whichever process accepts it first).
    clients: tuple[int, ...] = ()

    @classmethod
    def pooled(cls, shares: list[CpuShare]) -> CpuShare:
        """Several spans as one (each share weighted by its span's length)."""
        seconds = sum(c.seconds for c in shares)

        def mean(name: str) -> float:
            return sum(getattr(c, name) * c.seconds for c in shares) / seconds

        n_workers = {len(c.workers) for c in shares}
        workers = (
            tuple(sum(c.workers[i] * c.seconds for c in shares) / seconds for i in range(n))
            if len(n_workers) == 1 and (n := n_workers.pop())
            else ()
        )
        clients = shares[0].clients if len(shares) == 1 else ()  # each span connects anew
        return cls(
            seconds,
            mean("server"),
            mean("postgres"),
            mean("generator"),
            mean("machine"),
            workers,
            clients,
        )

    def per(self, n: int) -> str:
        """CPU milliseconds per unit of work, ``n`` units done in the span."""
        ms = 1000 * self.seconds / max(n, 1)
        return (
            f"server {self.server * ms:.1f}, PostgreSQL {self.postgres * ms:.1f}, load "
            f"generator {self.generator * ms:.1f} ms"
        )

    def cores(self) -> str:
        per_worker = " + ".join(f"{w:.2f}" for w in self.workers)
        if self.clients:
            per_worker += f"; clients {' + '.join(str(c) for c in self.clients)}"
        split = f" ({per_worker})" if self.workers else ""
        return (
            f"cores busy: server {self.server:.2f}{split}, PostgreSQL {self.postgres:.2f}, load "
            f"generator {self.generator:.2f}; machine {100 * self.machine:.0f}% busy"
        )


class CpuMeter:
    """CPU used between :meth:`start` and :meth:`stop` by the server process ``server_pid``
    and its children (uvicorn's workers), PostgreSQL's processes and this process."""

    def __init__(self, server_pid: int, port: int | None = None) -> None:
        self.server_pid, self.port = server_pid, port

    def _read(self) -> tuple[dict[int, float], dict[int, float], float, tuple[float, float], float]:
        server = [self.server_pid, *_children(self.server_pid)]
        return (
            {p: _cpu_seconds(p) for p in server},
            {p: _cpu_seconds(p) for p in _postgres_pids()},
            _cpu_seconds(os.getpid()),
            _machine(),
            time.monotonic(),
        )

    def start(self) -> None:
        self._begin = self._read()

    def stop(self) -> CpuShare:
        end, begin = self._read(), self._begin

        def used(after: dict[int, float], before: dict[int, float]) -> float:
            # A process that ended in the span is not counted; one that began counts in full.
            return sum(t - before.get(p, 0.0) for p, t in after.items())

        span = end[4] - begin[4]
        busy, total = end[3][0] - begin[3][0], end[3][1] - begin[3][1]
        workers = [p for p in end[0] if p != self.server_pid and not _resource_tracker(p)]
        inodes = tcp_sockets(self.port, ESTABLISHED) if self.port else set()
        by_cpu = sorted(
            ((used({p: end[0][p]}, begin[0]) / span, _sockets_held(p, inodes)) for p in workers),
            reverse=True,
        )
        return CpuShare(
            seconds=span,
            server=used(end[0], begin[0]) / span,
            postgres=used(end[1], begin[1]) / span,
            generator=(end[2] - begin[2]) / span,
            machine=busy / total if total else 0.0,
            workers=tuple(cpu for cpu, _ in by_cpu),
            clients=tuple(n for _, n in by_cpu) if self.port else (),
        )
