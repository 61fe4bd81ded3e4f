"""``activeseg serve``'s process supervisor: start the API and the worker, stop every process.

Why it exists: ``serve`` used to run uvicorn in its own process and stop the Celery worker in a
``finally``. uvicorn re-raises SIGTERM after its shutdown, so that ``finally`` never ran: each
``docker stop`` or ``systemctl stop`` left a worker behind (re-parented to PID 1, still
training). Here the serve process serves nothing itself. It starts each part as a child in
its own session (so a terminal's Ctrl-C reaches the supervisor only, which then stops the
parts in order), and it handles SIGTERM, SIGINT, SIGHUP and SIGQUIT itself.

Stopping (a signal, or one part exiting on its own):

1. SIGTERM to every part. uvicorn stops accepting connections and finishes open requests;
   Celery makes a warm shutdown: it takes no new job and lets the running one finish.
2. After ``grace_s`` seconds, SIGKILL to every process group still alive (a Celery pool
   process, a uvicorn worker: nothing of a part survives it). A job cut off there keeps its
   row ``running`` with a heartbeat that no longer moves; the maintenance sweep of the next
   worker (serve's own, after a restart) returns it to ``pending`` once the heartbeat is
   ``job_stale_after_s`` old and dispatches it once, and the claim lets exactly one delivery
   run it (activeseg/jobs/runner.py, activeseg/worker/dispatch.py).

SIGQUIT, or a second SIGTERM/SIGINT while waiting, skips the rest of the grace. A part that
exits on its own is not restarted: the supervisor stops the others and exits 1, so a restart
policy (Docker, systemd) restarts the whole service and a crash loop stays visible. A stop on
request exits 0. If the supervisor itself is killed (SIGKILL, OOM), Linux sends each part its
``death_signal`` (PR_SET_PDEATHSIG): uvicorn then shuts down, Celery makes a cold shutdown, and
Celery's pool processes carry their own PR_SET_PDEATHSIG, so no orphan outlives the service.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger(__name__)

POLL_S = 0.2
"""How often the supervisor looks at its parts and at signals received. A signal handler only
records the signal (doing more inside a handler risks re-entering locks held by the loop)."""

KILL_WAIT_S = 10.0
"""After SIGKILL, how long to wait for the kernel to end a part before giving up on it."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
_PR_SET_PDEATHSIG = 1


@dataclass
class Part:
    """One child process of the service: its command, how it is asked to stop, when it is up."""

    name: str
    argv: Sequence[str]
    stop_signal: int = signal.SIGTERM
    # Sent by the kernel if the supervisor dies without stopping this part.
    death_signal: int = signal.SIGTERM
    env: dict[str, str] | None = None
    ready: Callable[[], bool] | None = None
    cleanup: Callable[[], None] | None = None  # for the caller, once the part has stopped
    pass_fds: tuple[int, ...] = ()  # file descriptors the child inherits
    on_start: Callable[[], None] | None = None  # for the caller, once the child runs
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    returncode: int | None = None
    announced: bool = False


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return libc.prctl  # type: ignore[no-any-return]


def _die_with_parent(prctl: Callable[..., int] | None, sig: int, parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: ask the kernel to send ``sig`` to the child when the supervisor dies,
    and exit at once if it died already (between ``fork`` and the ``prctl``)."""

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class Supervisor:
    """Runs ``parts`` until a stop signal or until one of them exits; then stops them all."""

    def __init__(
        self,
        parts: Sequence[Part],
        grace_s: float = 25.0,
        say: Callable[[str], None] = log.info,
        on_ready: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.parts = list(parts)
        self.on_stop = on_stop  # first thing when stopping (the balancer stops accepting)
        self.grace_s = grace_s
        self.say = say
        self.on_ready = on_ready
        self.signals: list[int] = []
        self._prctl = _libc_prctl()

    def run(self) -> int:
        """Start every part, wait, stop every part. 0 after a stop on request, 1 when a part
        exited on its own (or could not be started)."""
        previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        try:
            started = self._start_all()
            crashed = self._watch() if started else None
        finally:  # even after an unexpected error here, no part outlives serve
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not started or crashed is not None:
            self.say("activeseg stopped after a failure")
            return 1
        self.say("activeseg stopped")
        return 0

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)

    def _start_all(self) -> bool:
        for part in self.parts:
            if self.signals:
                return True  # asked to stop while starting: stop what runs
            try:
                part.proc = subprocess.Popen(
                    list(part.argv),
                    env=part.env,
                    start_new_session=True,
                    pass_fds=part.pass_fds,
                    preexec_fn=_die_with_parent(self._prctl, part.death_signal, os.getpid()),
                )
            except OSError as exc:
                self.say(f"could not start the {part.name}: {exc}")
                return False
            if part.on_start is not None:
                part.on_start()
        return True

    def _watch(self) -> Part | None:
        """Wait for a stop signal (None) or for a part that exits on its own (that part)."""
        while not self.signals:
            for part in self.parts:
                if _exited(part):
                    self.say(
                        f"the {part.name} exited on its own (status {_status(part)}); "
                        "stopping the rest (not restarted: let a restart policy restart serve)"
                    )
                    return part
            self._announce_ready()
            time.sleep(POLL_S)
        self.say(f"{signal.Signals(self.signals[0]).name} received: stopping activeseg")
        return None

    def _announce_ready(self) -> None:
        waiting = [p for p in self.parts if not p.announced]
        if not waiting:
            return
        for part in waiting:
            part.announced = part.ready is None or _probe(part.ready)
        if all(p.announced for p in self.parts) and self.on_ready is not None:
            self.on_ready()

    def _stop_all(self) -> None:
        """Ask every part to stop, wait out the grace (less on SIGQUIT or a repeated signal),
        then kill each process group still alive."""
        if self.on_stop is not None:
            self.on_stop()
        running = self._running()
        for part in running:
            _signal_group_leader(part, part.stop_signal)
        if running and not self._hurry():
            self.say(
                f"waiting up to {self.grace_s:g} s for the "
                f"{' and the '.join(p.name for p in running)} to stop (a running job may "
                "finish); Ctrl-C again to stop at once"
            )
        deadline = time.monotonic() + self.grace_s
        while self._running() and time.monotonic() < deadline and not self._hurry():
            time.sleep(POLL_S)
        for part in self._running():
            self.say(
                f"killing the {part.name} at once"
                if self._hurry()
                else f"the {part.name} did not stop in time: killing it"
            )
            _kill_group(part)
        for part in self.parts:
            _reap(part)

    def _hurry(self) -> bool:
        """Stop at once: SIGQUIT was received, or a second stop signal."""
        return signal.SIGQUIT in self.signals or len(self.signals) > 1

    def _running(self) -> list[Part]:
        return [p for p in self.parts if p.proc is not None and not _exited(p)]


def _probe(ready: Callable[[], bool]) -> bool:
    try:
        return ready()
    except Exception:  # noqa: BLE001 - a failing probe means "not up yet"
        return False


def _exited(part: Part) -> bool:
    """True once the part's leader process has exited. Looked at with WNOWAIT: the exited
    leader stays a zombie, so its pid (= the group id) cannot be reused before ``_reap`` has
    swept the group."""
    if part.proc is None:
        return False
    if part.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, part.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid != 0


def _status(part: Part) -> str:
    if part.proc is None:
        return "not started"
    info = os.waitid(os.P_PID, part.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return "running"
    if info.si_code == os.CLD_EXITED:
        return f"exit code {info.si_status}"
    return f"killed by {signal.Signals(info.si_status).name}"


def _signal_group_leader(part: Part, sig: int) -> None:
    """Only the leader: Celery and uvicorn stop their own children in order."""
    assert part.proc is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(part.proc.pid, sig)


def _kill_group(part: Part) -> None:
    assert part.proc is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(part.proc.pid, signal.SIGKILL)


def _reap(part: Part) -> None:
    """Kill whatever is left of the part's process group (a pool process whose parent is gone),
    then collect the leader's exit status."""
    if part.proc is None or part.returncode is not None:
        return
    _kill_group(part)
    try:
        part.returncode = part.proc.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        log.error("the %s (pid %s) did not end after SIGKILL", part.name, part.proc.pid)
