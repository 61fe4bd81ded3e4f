"""`activeseg serve` stops everything it started: real serve processes, real signals.

Each test starts `activeseg serve` as a subprocess on a fresh embedded data folder (SQLite, the
filesystem broker, a blob folder), waits until the API answers and the worker has run a job,
records serve's whole process tree from /proc, signals serve and asserts that every process of
the tree is gone within a bound. Whatever a test starts it kills by pid, even on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.utils import make_project

START_TIMEOUT_S = 240.0
"""Migrations, torch and Celery imports and a first job, on a 2-core machine shared by others."""
STOP_BOUND_S = 60.0
"""Serve's stop grace in these tests is a few seconds; the rest is slack for a loaded machine."""
Proc = tuple[int, int]  # (pid, start time in clock ticks): a pid reused later is another process


def _stat(pid: int) -> tuple[int, str, int] | None:
    """``(ppid, state, start time)`` of ``pid`` from /proc, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], int(fields[19])


def process_tree(root: int) -> set[Proc]:
    """``root`` and every process descending from it, now."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[2]
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in starts:
            tree.add((pid, starts[pid]))
            todo.extend(children.get(pid, []))
    return tree


def alive(proc: Proc) -> bool:
    """Still running (a zombie has ended: it only waits for its parent to read its status)."""
    st = _stat(proc[0])
    return st is not None and st[2] == proc[1] and st[1] not in ("Z", "X")


def kill_all(procs: set[Proc]) -> None:
    for proc in procs:
        if alive(proc):
            os.kill(proc[0], signal.SIGKILL)


def serve_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a serve on ``data_dir``: the embedded defaults, nothing of the test
    session's PostgreSQL/Redis settings (only the torch thread cap is kept)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVESEG_")}
    env.update(
        ACTIVESEG_DATA_DIR=str(data_dir),
        ACTIVESEG_ENVIRONMENT="test",
        ACTIVESEG_TORCH_THREADS=os.environ.get("ACTIVESEG_TORCH_THREADS", "1"),
        **{f"ACTIVESEG_{k.upper()}": v for k, v in settings.items()},
    )
    return env


class Serve:
    """One `activeseg serve` subprocess, its log, and every process it was seen to have."""

    def __init__(self, data_dir: Path, *args: str, **settings: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"{data_dir.name}-serve-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "activeseg.cli", "serve", "--port", str(self.port)] + list(args),
            env=serve_env(data_dir, **settings),
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.seen: set[Proc] = set()

    def tree(self) -> set[Proc]:
        now = process_tree(self.proc.pid)
        self.seen |= now
        return now

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def admin(self) -> httpx.Client:
        token = (self.data_dir / "admin-token").read_text().strip()
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until /health answers 200 (while recording the tree as it grows)."""
        start = time.monotonic()
        while True:
            self.tree()
            self.assert_running()
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            if time.monotonic() - start > timeout:
                raise AssertionError(f"no /health after {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited ({self.proc.returncode}):\n{self.output()[-3000:]}")

    def stop(self, sig: int, bound: float = STOP_BOUND_S) -> int:
        """Send ``sig`` to serve; its exit code once it and its whole tree are gone."""
        procs = self.tree()
        os.kill(self.proc.pid, sig)
        deadline = time.monotonic() + bound
        while any(alive(p) for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {p for p in procs if alive(p)}
        assert not left, f"still running {bound} s after {signal.Signals(sig).name}: {left}"
        return self.proc.wait(timeout=5)

    def kill(self) -> None:
        """The cleanup: SIGKILL serve and everything it was ever seen to run, by pid."""
        if self.proc.poll() is None:
            self.seen |= process_tree(self.proc.pid)
        kill_all(self.seen)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def wait_job(client: httpx.Client, job_id: int, states: tuple[str, ...], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")
        time.sleep(0.3)


def wait_worker(serve: Serve) -> None:
    """The worker is up when it has run a job: a storage check of a new empty project."""
    with serve.admin() as admin:
        project = make_project(admin)
        r = admin.post(f"/projects/{project['id']}/verify", json={})
        assert r.status_code == 202, r.text
        job = wait_job(admin, r.json()["id"], ("succeeded", "failed"), START_TIMEOUT_S)
    assert job["state"] == "succeeded", job


@pytest.fixture
def serves(tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.kill()


def start(serves: list[Serve], data_dir: Path, *args: str, **settings: str) -> Serve:
    serve = Serve(data_dir, *args, **settings)
    serves.append(serve)
    return serve


def worker_main(tree: set[Proc]) -> int:
    """The pid of the Celery worker's main process: a Celery process whose parent is not one."""
    for pid, _ in tree:
        parent = _stat(pid)
        if (
            b"celery" in _cmdline(pid)
            and parent is not None
            and b"celery" not in _cmdline(parent[0])
        ):
            return pid
    raise AssertionError(f"no Celery worker in {tree}")


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return []


def demo_ids(client: httpx.Client) -> tuple[int, int]:
    """``(project id, first retrain job id)`` of the demo project."""
    [project] = [p for p in client.get("/projects").json()["data"] if p["name"] == "digits-demo"]
    jobs = client.get(f"/projects/{project['id']}/jobs").json()["data"]
    [job_id] = [job["id"] for job in jobs if job["kind"] == "retrain"]
    return project["id"], job_id


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["SIGTERM", "SIGINT", "SIGQUIT"]
)
def test_a_stop_signal_ends_every_process_of_serve(
    serves: list[Serve], tmp_path: Path, sig: int
) -> None:
    serve = start(serves, tmp_path / "data", "--no-demo", "--stop-grace", "5")
    serve.wait_healthy()
    wait_worker(serve)
    tree = serve.tree()
    # serve, uvicorn, the Celery main process, its pool process and its beat process
    assert len(tree) >= 5, tree
    assert serve.stop(sig) == 0
    out = serve.output()
    assert f"{signal.Signals(sig).name} received: stopping activeseg" in out
    assert out.rstrip().endswith("activeseg stopped"), out[-2000:]


def test_a_killed_serve_takes_its_processes_with_it(serves: list[Serve], tmp_path: Path) -> None:
    """SIGKILL gives serve no chance to stop anything: the kernel's parent-death signal does."""
    serve = start(serves, tmp_path / "data", "--no-demo")
    serve.wait_healthy()
    wait_worker(serve)
    assert serve.stop(signal.SIGKILL) == -signal.SIGKILL


def test_a_worker_that_dies_stops_the_api_too(serves: list[Serve], tmp_path: Path) -> None:
    serve = start(serves, tmp_path / "data", "--no-demo", "--stop-grace", "5")
    serve.wait_healthy()
    wait_worker(serve)
    tree = serve.tree()
    os.kill(worker_main(tree), signal.SIGKILL)
    deadline = time.monotonic() + STOP_BOUND_S
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in tree), {p for p in tree if alive(p)}
    assert serve.proc.wait(timeout=5) == 1
    assert "the worker exited on its own (status killed by SIGKILL)" in serve.output()


def test_a_job_cut_off_by_a_stop_runs_exactly_once_more_after_a_restart(
    serves: list[Serve], tmp_path: Path
) -> None:
    """The demo's first retrain is cut off (grace 1 s) while training: the stop still ends
    every process; after a restart the job is revived once (stale heartbeat) and succeeds; two
    claims in all (``attempts``), one model version."""
    data = tmp_path / "data"
    quick = {"job_stale_after_s": "15", "maintenance_interval_s": "2"}
    first = start(serves, data, "--stop-grace", "1", **quick)
    first.wait_healthy()
    with first.admin() as admin:
        project_id, job_id = demo_ids(admin)
        deadline = time.monotonic() + START_TIMEOUT_S
        while (job := admin.get(f"/jobs/{job_id}").json())["progress"] < 0.05:
            assert job["state"] in ("pending", "queued", "running"), job
            assert time.monotonic() < deadline, f"the retrain did not start training: {job}"
            time.sleep(0.2)
    assert first.stop(signal.SIGTERM) == 0
    assert "the worker did not stop in time: killing it" in first.output()

    second = start(serves, data, "--stop-grace", "5", **quick)
    second.wait_healthy()
    with second.admin() as admin:
        job = wait_job(admin, job_id, ("succeeded", "failed"), 900)
        assert (job["state"], job["attempts"]) == ("succeeded", 2), job
        models = admin.get(f"/projects/{project_id}/models").json()["data"]
        assert [m["job_id"] for m in models] == [job_id]
        assert admin.get(f"/projects/{project_id}").json()["active_model_id"] == models[0]["id"]
    assert second.stop(signal.SIGTERM) == 0


STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
    "time.sleep(600)\n"
)
SUPERVISE = """
import sys
from activeseg.admin.supervisor import Part, Supervisor
parts = [
    Part("stubborn part", [sys.executable, "-c", {stubborn!r}]),
    Part("polite part", [sys.executable, "-c", "import time; time.sleep(600)"]),
]
sys.exit(Supervisor(parts, grace_s={grace}, say=lambda m: print(m, flush=True)).run())
"""


def supervise(tmp_path: Path, grace: float) -> tuple[subprocess.Popen[bytes], Path]:
    """A supervisor of a part that ignores SIGTERM (and has a child that does too) and of a
    part that stops on SIGTERM; its output goes to the returned file."""
    out = tmp_path / "supervisor.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE.format(stubborn=STUBBORN, grace=grace)],
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, out


def wait_tree(proc: subprocess.Popen[bytes], size: int) -> set[Proc]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(tree := process_tree(proc.pid)) < size:
        assert proc.poll() is None and time.monotonic() < deadline, tree
        time.sleep(0.05)
    return tree


def wait_gone(procs: set[Proc], bound: float) -> float:
    start = time.monotonic()
    while any(alive(p) for p in procs):
        assert time.monotonic() - start < bound, {p for p in procs if alive(p)}
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_part_that_ignores_sigterm_is_killed_with_its_group_after_the_grace(
    tmp_path: Path,
) -> None:
    proc, out = supervise(tmp_path, grace=3)
    tree: set[Proc] = set()
    try:
        tree = wait_tree(proc, 4)  # supervisor, stubborn part and its child, polite part
        os.kill(proc.pid, signal.SIGTERM)
        took = wait_gone(tree, STOP_BOUND_S)
        assert proc.wait(timeout=5) == 0
    finally:
        kill_all(tree | process_tree(proc.pid))
        proc.wait(timeout=10)
    assert took >= 3, took
    log = out.read_text()
    assert "the stubborn part did not stop in time: killing it" in log
    assert "polite part did not stop" not in log


def test_a_second_signal_skips_the_grace(tmp_path: Path) -> None:
    proc, out = supervise(tmp_path, grace=600)
    tree: set[Proc] = set()
    try:
        tree = wait_tree(proc, 4)
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_BOUND_S
        while "waiting up to 600 s" not in out.read_text():
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        wait_gone(tree, STOP_BOUND_S)
        assert proc.wait(timeout=5) == 0
    finally:
        kill_all(tree | process_tree(proc.pid))
        proc.wait(timeout=10)
    assert "killing the stubborn part at once" in out.read_text()
