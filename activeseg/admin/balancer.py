"""Several API processes on one port, each connection handed to the next process in turn.

Why: ``uvicorn --workers N`` lets N processes accept from one shared listening socket. When
connections arrive together (32 annotation tools opening their keep-alive connections at
once), the first process to wake accepts every one waiting: in BENCHMARKS.md ("Handing the
connections round") 8 runs of 10 gave one process 21 to 32 of the 32 clients. A process runs on
one core at most (the interpreter lock), so those clients share one core while the other
idles, and their latency doubles. ``SO_REUSEPORT`` sockets (one per process) spread
connections by a hash of the addresses, as a coin would: 20 + 12 is common. An API process
with a connection for life cannot move it; only the hand-out can be fair.

How (the model is Node.js's cluster module, which does the same by default on Linux): the
serve process holds the one listening socket. A thread of it (:class:`Balancer`) accepts each
connection and passes the open socket to API process ``k``, ``k`` taking the values 1..N in
turn, over a Unix socket pair (``SCM_RIGHTS``: the process receives the same connection, the
client notices nothing, and its address stays the client's own). Each API process is
uvicorn's own server (:class:`HandedServer`) with no listening socket of its own: it serves
the connections it receives exactly as those it would have accepted (keep-alive, timeouts,
graceful shutdown). A process that cannot take a connection now (its queue is full, it has
exited) is skipped for the next one.

Stopping: the balancer closes the listening socket first (new connections are refused, as
uvicorn's own listener would refuse them), then the supervisor asks each API process to stop;
each finishes its open requests within the grace.

Run by ``activeseg serve --api-workers N`` and ``activeseg api --processes N`` for N > 1.
An API process is ``python -m activeseg.admin.balancer --channel-fd FD ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import selectors
import socket
import sys
import threading
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

READY = b"r"
"""What an API process sends back over its channel once it serves."""

ACCEPT_BACKLOG = 2048
"""The listening socket's queue of connections not yet accepted (uvicorn's default)."""

STOP_POLL_S = 0.2
"""How often the accepting thread looks for a stop while no connection arrives."""


class Balancer:
    """The listening socket, and a thread that hands each accepted connection to the next of
    ``processes`` API processes in turn."""

    def __init__(self, host: str, port: int, processes: int) -> None:
        if processes < 1:
            raise ValueError("the balancer needs at least one API process")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # SO_REUSEADDR (create_server's default here): a restart binds at once, even while
        # the previous run's closed connections linger in TIME_WAIT.
        self.listener = socket.create_server((host, port), family=family, backlog=ACCEPT_BACKLOG)
        self.listener.setblocking(False)
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(processes)]
        self._ours = [ours for ours, _ in pairs]
        self._theirs: list[socket.socket | None] = [theirs for _, theirs in pairs]
        for ours in self._ours:
            ours.setblocking(False)  # a full or dead process never stalls the hand-out
        self.handed = [0] * processes
        """Connections handed to each process so far."""
        self._ready = [False] * processes
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="balancer", daemon=True)

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def channel_fd(self, process: int) -> int:
        """The file descriptor API process ``process`` inherits (its end of the channel)."""
        theirs = self._theirs[process]
        assert theirs is not None, "the process was started already"
        return theirs.fileno()

    def started(self, process: int) -> None:
        """API process ``process`` holds its end now: close this process's copy, so that the
        channel breaks when that process exits."""
        theirs, self._theirs[process] = self._theirs[process], None
        if theirs is not None:
            theirs.close()

    def ready(self, process: int) -> bool:
        """True once API process ``process`` has said it serves."""
        if not self._ready[process]:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                self._ready[process] = self._ours[process].recv(1) == READY
        return self._ready[process]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Refuse new connections from now on; the API processes keep those they hold."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.listener.close()

    def close(self) -> None:
        """After the API processes have exited: release the channels too."""
        self.stop()
        for process, ours in enumerate(self._ours):
            self.started(process)
            ours.close()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if selector.select(timeout=STOP_POLL_S):
                    self._accept_waiting()

    def _accept_waiting(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: the connection waits in the queue
                log.error("the balancer could not accept a connection: %s", exc)
                self._stop.wait(STOP_POLL_S)  # not a busy loop while the cause lasts
                return
            with conn:
                self._hand(conn)

    def _hand(self, conn: socket.socket) -> None:
        """To the next process in turn that takes it; closed (the client sees a reset) when
        none does. The process holds its own copy: this one is closed by the caller."""
        n = len(self._ours)
        for step in range(n):
            k = (self._next + step) % n
            try:
                socket.send_fds(self._ours[k], [b"c"], [conn.fileno()])
            except OSError:  # full (BlockingIOError) or gone (BrokenPipeError): the next
                continue
            self.handed[k] += 1
            self._next = (k + 1) % n
            return
        log.error("no API process could take a connection: closed")


class HandedServer(uvicorn.Server):
    """uvicorn's server for connections received over ``channel`` instead of accepted from a
    listening socket of its own."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self.channel = channel
        self._taking = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # no listening socket of its own
        if not self.started:
            return
        loop = asyncio.get_running_loop()
        # What uvicorn's own startup builds for each connection it accepts.
        protocol_class: Any = self.config.http_protocol_class
        protocol = functools.partial(
            protocol_class,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            _loop=loop,
        )
        self.channel.setblocking(False)
        loop.add_reader(self.channel.fileno(), self._receive, loop, protocol)
        self._taking = True
        self.channel.send(READY)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._stop_taking()
        await super().shutdown(sockets=sockets)

    def _receive(self, loop: asyncio.AbstractEventLoop, protocol: Any) -> None:
        while self._taking:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            for fd in fds:
                conn = socket.socket(fileno=fd)
                task = loop.create_task(loop.connect_accepted_socket(protocol, conn))
                self._tasks.add(task)
                task.add_done_callback(self._connected)
            if not data:  # the serve process is gone (and ends this one too)
                self._stop_taking()

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The client went away between the hand-out and here: nothing to serve.
            log.debug("a handed connection could not be set up: %s", task.exception())

    def _stop_taking(self) -> None:
        if self._taking:
            self._taking = False
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
            self.channel.close()


def api_process_argv(channel_fd: int, grace_s: float, log_level: str = "info") -> list[str]:
    """The command of one API process served by the balancer."""
    return [
        sys.executable, "-m", "activeseg.admin.balancer", "--channel-fd", str(channel_fd),
        "--timeout-graceful-shutdown", str(max(1, int(grace_s))), "--log-level", log_level,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One API process served by the balancer.")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=25)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--app", default="activeseg.api.main:app")
    args = parser.parse_args(argv)
    channel = socket.socket(fileno=args.channel_fd)
    config = uvicorn.Config(
        args.app,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
    )
    HandedServer(config, channel).run()


if __name__ == "__main__":
    main()
