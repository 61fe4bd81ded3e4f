"""Task leasing latency: p50/p99 and leases per second over real HTTP against PostgreSQL.

Usage::

    python benchmarks/lease_latency.py [--sizes 1000,100000] [--clients 32] [--leases 2000]
        [--warmup 200] [--workers 2] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

For each queue size S it fills a throw-away database (``activeseg_bench``, dropped and made
again, migrated with Alembic) with enough queued tasks (COPY, random priorities) that at least S
stay queued throughout, then measures ``--leases`` leases by ``--clients`` concurrent clients
after a warm-up, and ``--single`` leases by one lone client, on two paths:

- ``raw SQL``: the lower bound. The lease query itself from psycopg (async, one connection per
  client): ``BEGIN; SELECT ... ORDER BY priority DESC, id DESC LIMIT 1 FOR UPDATE SKIP LOCKED;
  UPDATE ...; COMMIT``.
- ``HTTP``: ``POST /projects/{id}/tasks/next`` as annotators see it (one connection and
  token per annotator; the lean client of :mod:`lean_http` unless ``--client httpx``)
  against ``activeseg api --processes 2`` in its own process (``--server``: or uvicorn's
  own ``--workers``; rate limit off): authentication, the lease transaction and the lease
  payload (region map from the blob store, region mask PNG, queue counts). Leased tasks are
  put back between the two.

Then, in this process and one lease at a time, it splits a lease into its parts (auth, lease
transaction, payload, and the payload's region map alone) and prints EXPLAIN ANALYZE of the
lease query at the largest size, to show that it reads ``ix_tasks_queue`` and no Seq Scan.
Images are 256x256 with grid tiles of 16 (256 regions each). Output: markdown on stdout.
Server, PostgreSQL and load generator share the machine: on few cores, the HTTP numbers are
CPU-bound and include the load generator's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psycopg
from lean_http import LISTEN, CpuMeter, CpuShare, add_client_option, open_client, tcp_sockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from activeseg.api.routes.tasks import _lease_payload  # noqa: E402
from activeseg.core.db import Database  # noqa: E402
from activeseg.core.imaging import encode_png  # noqa: E402
from activeseg.core.migrate import upgrade  # noqa: E402
from activeseg.core.project_config import ClassDef, ProjectSettings  # noqa: E402
from activeseg.core.services import auth, tasks  # noqa: E402
from activeseg.core.services.projects import create_project, project_settings  # noqa: E402
from activeseg.core.services.regions import (  # noqa: E402
    compute_region_map,
    encode_region_map,
    task_region_map,
)
from activeseg.core.settings import Settings  # noqa: E402
from activeseg.core.storage import open_store  # noqa: E402
from activeseg.core.tables import Image, RegionSet  # noqa: E402

SIDE, TILE = 256, 16
REGIONS_PER_IMAGE = (SIDE // TILE) ** 2

LEASE_SELECT = (
    "SELECT id FROM tasks WHERE project_id = %s AND state = 'queued' "
    "ORDER BY priority DESC, id DESC LIMIT 1 FOR UPDATE SKIP LOCKED"
)
LEASE_UPDATE = (
    "UPDATE tasks SET state = 'leased', leased_by = %s, leased_at = now(), "
    "lease_expires_at = now() + interval '1 hour', lease_count = lease_count + 1 WHERE id = %s"
)


@dataclass
class Env:
    dsn: str  # psycopg
    settings: Settings
    db: Database
    pid: int
    users: list[tuple[int, str]]  # (user id, token)
    images: list[int]
    region_map_key: str  # every image's map (grid maps depend on the size only)


@dataclass
class Series:
    """The leases of one setting (size, clients, path), pooled over the rounds."""

    latencies: list[float] = field(default_factory=list)  # seconds, measured leases only
    wall: float = 0.0
    round_p99s: list[float] = field(default_factory=list)  # ms
    cpu: list[CpuShare] = field(default_factory=list)  # HTTP runs: the CPU of each round

    def add(self, latencies: list[float], wall: float, cpu: CpuShare | None = None) -> None:
        self.cpu += [cpu] if cpu is not None else []
        self.latencies += latencies
        self.wall += wall
        self.round_p99s.append(1000 * float(np.percentile(latencies, 99)))

    @property
    def p50(self) -> float:
        return 1000 * statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return 1000 * float(np.percentile(self.latencies, 99))

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall

    @property
    def spread(self) -> str:
        return f"{min(self.round_p99s):.0f}–{max(self.round_p99s):.0f}"


def fresh_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def setup(admin_dsn: str, dbname: str, data_dir: Path, n_users: int, n_images: int) -> Env:
    dsn = fresh_database(admin_dsn, dbname)
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    upgrade(url)
    settings = Settings(
        environment="test",
        data_dir=data_dir,
        database_url=url,
        broker_url="filesystem://",
        storage_url=f"file://{data_dir / 'blobs'}",
    )
    db, store = Database(settings), open_store(settings.storage_url)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    image_key = store.put(encode_png(pixels))
    # Grid maps depend on the size only: one blob serves every image (content-addressed).
    region_key = store.put(encode_region_map(compute_region_map(pixels, "grid", TILE)))
    users: list[tuple[int, str]] = []
    with db.session() as s:
        owner = auth.create_user(s, "bench-owner", "admin")
        project = create_project(
            s,
            owner,
            "bench",
            [ClassDef(id=i, name=f"c{i}") for i in range(3)],
            settings=ProjectSettings(
                region_kind="grid", region_size=TILE, per_image_cap=None, lease_seconds=3600
            ),
        )
        for k in range(n_users):
            user = auth.create_user(s, f"annotator-{k}", "annotator")
            auth.add_member(s, project, user.id)
            users.append((user.id, auth.create_token(s, user)[1]))
        images = [
            Image(
                project_id=project.id,
                sha256=hashlib.sha256(f"bench-{i}".encode()).hexdigest(),
                blob_key=image_key,
                filename=f"{i}.png",
                format="png",
                width=SIDE,
                height=SIDE,
                channels=3,
                size_bytes=SIDE * SIDE * 3,
            )
            for i in range(n_images)
        ]
        s.add_all(images)
        s.flush()
        s.add_all(
            RegionSet(
                image_id=im.id,
                kind="grid",
                size=TILE,
                n_regions=REGIONS_PER_IMAGE,
                blob_key=region_key,
            )
            for im in images
        )
        pid, image_ids = project.id, [im.id for im in images]
    return Env(dsn, settings, db, pid, users, image_ids, region_key)


def fill_queue(env: Env, n_tasks: int, seed: int) -> None:
    """Replace every task by ``n_tasks`` queued ones (random priorities, their region map named
    as build_queue names it), then VACUUM ANALYZE."""
    if n_tasks > len(env.images) * REGIONS_PER_IMAGE:
        raise SystemExit(f"{n_tasks} tasks need more than {len(env.images)} images")
    rng = np.random.default_rng(seed)
    priorities = rng.random(n_tasks)
    now = datetime.now(UTC)
    cols = (
        "project_id, image_id, regions, region_key, region_kind, region_size, region_map_key, "
        "measure, priority, state, lease_count, created_at"
    )
    with psycopg.connect(env.dsn) as conn:
        conn.execute("TRUNCATE tasks CASCADE")
        with conn.cursor().copy(f"COPY tasks ({cols}) FROM STDIN") as copy:
            for k in range(n_tasks):
                image, region = env.images[k // REGIONS_PER_IMAGE], k % REGIONS_PER_IMAGE
                copy.write_row(
                    (env.pid, image, f"[{region}]", str(region), "grid", TILE,
                     env.region_map_key, "entropy", float(priorities[k]), "queued", 0, now)
                )  # fmt: skip
    vacuum(env)


def requeue(env: Env) -> None:
    """Put every leased task back, as if never leased, and clean the table up."""
    with psycopg.connect(env.dsn) as conn:
        conn.execute(
            "UPDATE tasks SET state = 'queued', leased_by = NULL, leased_at = NULL, "
            "lease_expires_at = NULL, lease_count = 0 WHERE state = 'leased'"
        )
    vacuum(env)


def vacuum(env: Env) -> None:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tasks")


def queued(env: Env) -> int:
    with psycopg.connect(env.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM tasks WHERE state = 'queued'").fetchone()
        assert row is not None
        return int(row[0])


async def drive(
    n_clients: int,
    n_leases: int,
    lease: Callable[[int], Awaitable[bool]],
) -> tuple[list[float], float]:
    """``n_clients`` loops calling ``lease(client)`` until ``n_leases`` calls were made;
    returns the latencies and the wall time."""
    latencies: list[float] = []
    issued = 0

    async def loop(k: int) -> None:
        nonlocal issued
        while issued < n_leases:
            issued += 1
            t0 = time.perf_counter()
            if not await lease(k):
                raise RuntimeError("the queue ran empty during the benchmark")
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(loop(k) for k in range(n_clients)))
    return latencies, time.perf_counter() - start


async def run_raw(
    env: Env, n_clients: int, warmup: int, n_leases: int
) -> tuple[list[float], float]:
    conns = [await psycopg.AsyncConnection.connect(env.dsn) for _ in range(n_clients)]
    uids = [env.users[k % len(env.users)][0] for k in range(n_clients)]

    async def lease(k: int) -> bool:
        conn = conns[k]
        async with conn.transaction():
            cur = await conn.execute(LEASE_SELECT, (env.pid,))
            row = await cur.fetchone()
            if row is None:
                return False
            await conn.execute(LEASE_UPDATE, (uids[k], row[0]))
        return True

    try:
        await drive(n_clients, warmup, lease)
        return await drive(n_clients, n_leases, lease)
    finally:
        for conn in conns:
            await conn.close()


async def run_http(
    env: Env, served: Served, n_clients: int, warmup: int, n_leases: int, client: str = "lean"
) -> tuple[list[float], float, CpuShare]:
    """``n_clients`` annotators leasing over HTTP, one connection and token each, with the
    lean client (:mod:`lean_http`, the default) or httpx; also returns the CPU the measured
    leases used."""
    tokens = [env.users[k % len(env.users)][1] for k in range(n_clients)]
    path = f"/projects/{env.pid}/tasks/next"
    clients = [open_client(client, served.url, t) for t in tokens]

    async def lease(k: int) -> bool:
        status, body = await clients[k].post(path)
        if status not in (200, 204):
            raise RuntimeError(f"lease: {status} {body[:300]!r}")
        return status == 200

    try:
        await drive(n_clients, warmup, lease)
        meter = CpuMeter(served.pid, urlsplit(served.url).port)
        meter.start()
        latencies, wall = await drive(n_clients, n_leases, lease)
        return latencies, wall, meter.stop()
    finally:
        for c in clients:
            await c.aclose()


@dataclass
class Served:
    url: str
    pid: int  # the server's main process; its API processes are its children


SERVERS = {
    "balancer": "activeseg api --processes N: one listening socket, each connection handed to "
    "the next process in turn (activeseg/admin/balancer.py), what serve and compose run",
    "uvicorn": "uvicorn --workers N: the processes accept from one shared socket",
    "reuse-port": "N uvicorn processes with a SO_REUSEPORT socket each "
    "(benchmarks/reuseport_serve.py): the kernel spreads connections by a hash",
}
DEFAULT_APP = "activeseg.api.main:app"


def add_server_option(parser: argparse.ArgumentParser) -> None:
    """``--server``, how the API processes share the port, and ``--app``."""
    parser.add_argument(
        "--server",
        choices=tuple(SERVERS),
        default="balancer",
        help="; ".join(f"{k}: {v}" for k, v in SERVERS.items()),
    )
    parser.add_argument(
        "--app",
        default=DEFAULT_APP,
        help="ASGI app to serve; 'module:factory()' calls a factory (e.g. "
        "'activeseg.api.app:create_app()'), to compare a variant of the app (needs --server "
        "uvicorn or reuse-port)",
    )


def check_server_option(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.server == "balancer" and args.app != DEFAULT_APP:
        parser.error("--app needs --server uvicorn or reuse-port (activeseg api serves its app)")


def server_label(args: argparse.Namespace) -> str:
    return f"{args.workers} API processes, {args.server} ({args.app})"


@contextmanager
def server(env: Env, workers: int, app: str, mode: str = "balancer") -> Iterator[Served]:
    """The API in ``workers`` processes (``mode``: see :data:`SERVERS`) on a free port,
    started and stopped (by its process id). The per-token rate limit is off: it would cap a
    client at 10 task requests per second, and the benchmarks measure what the server can do,
    not what the limit lets through. Ready once 2 N requests in a row, each on a new
    connection, were answered, and with ``reuse-port`` once all N listen (a client connected
    earlier would find only the first)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    s = env.settings
    child_env = {
        **os.environ,
        "ACTIVESEG_ENVIRONMENT": s.environment,
        "ACTIVESEG_DATA_DIR": str(s.data_dir),
        "ACTIVESEG_DATABASE_URL": s.database_url,
        "ACTIVESEG_BROKER_URL": s.broker_url,
        "ACTIVESEG_STORAGE_URL": s.storage_url,
        "ACTIVESEG_LOG_LEVEL": "WARNING",
        "ACTIVESEG_RATE_LIMIT_TASKS_PER_MINUTE": "0",
    }
    factory = ["--factory"] if app.endswith("()") else []  # "module:create_app()": a factory
    cmd = {
        "balancer": [
            sys.executable, "-m", "activeseg", "api", "--port", str(port),
            "--processes", str(workers),
        ],
        "uvicorn": [
            sys.executable, "-m", "uvicorn", app.removesuffix("()"), *factory, "--host",
            "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level",
            "warning", "--no-access-log", "--lifespan", "off",
        ],
        "reuse-port": [
            sys.executable, str(REPO / "benchmarks" / "reuseport_serve.py"),
            app.removesuffix("()"), *factory, "--port", str(port), "--workers", str(workers),
        ],
    }[mode]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    reuse_port = mode == "reuse-port"
    try:
        deadline, ok = time.monotonic() + 60, 0
        while ok < 2 * workers or (reuse_port and len(tcp_sockets(port, LISTEN)) < workers):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            try:
                ok = ok + 1 if httpx.get(f"{url}/health", timeout=5).status_code < 500 else 0
            except httpx.TransportError:
                ok = 0
            time.sleep(0.1)
        yield Served(url, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def breakdown(env: Env, n: int) -> dict[str, float]:
    """One lease at a time in this process, as ``POST /projects/{id}/tasks/next`` does it
    (one transaction: the token with the project and membership, the lease statement, the
    payload, the commit): median ms of each part, of the whole, and of the payload's region
    map read again on its own (the task names its blob: the process's map cache, no query)."""
    store = open_store(env.settings.storage_url)
    token = env.users[0][1]
    names = ("auth", "lease statement", "payload", "commit", "whole lease", "region map")
    parts: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(n):
        t0 = time.perf_counter()
        with env.db.session() as s:
            user, project = auth.authenticate_for_project(s, token, env.pid)
            t1 = time.perf_counter()
            task = tasks.lease_next(s, project, user, project_settings(project).lease_seconds)
            assert task is not None
            t2 = time.perf_counter()
            _lease_payload(s, store, project, task).model_dump_json()
            t3 = time.perf_counter()
        t4 = time.perf_counter()
        with env.db.session() as s:
            task_region_map(s, store, task)
        t5 = time.perf_counter()
        spans = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, t5 - t4)
        for name, dt in zip(names, spans, strict=True):
            parts[name].append(1000 * dt)
    return {name: statistics.median(v) for name, v in parts.items()}


def explain(env: Env) -> str:
    with psycopg.connect(env.dsn) as conn:
        rows = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + LEASE_SELECT.replace("SELECT id", "SELECT *"),
            (env.pid,),
        ).fetchall()
        conn.rollback()
    return "\n".join(r[0] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--db", default="activeseg_bench", help="dropped and made again")
    parser.add_argument("--sizes", default="1000,100000", help="queued tasks, comma separated")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--leases", type=int, default=2000, help="measured leases per run")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="API processes")
    add_server_option(parser)
    parser.add_argument("--breakdown", type=int, default=300, help="sequential leases to split")
    parser.add_argument("--single", type=int, default=300, help="leases by one lone client")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all the sizes")
    add_client_option(parser)
    args = parser.parse_args()
    check_server_option(parser, args)
    sizes = [int(x) for x in args.sizes.split(",")]
    runs = [(args.clients, args.warmup, args.leases), (1, 20, args.single)]
    extra = sum(w + n for _, w, n in runs) + args.breakdown
    started = time.perf_counter()
    series: dict[tuple[int, int, str], Series] = defaultdict(Series)  # (size, clients, path)
    low: dict[int, int] = {}  # the fewest tasks queued at the end of a run, per size
    splits: dict[int, dict[str, float]] = {}
    plan = ""
    with tempfile.TemporaryDirectory(prefix="activeseg-bench-") as tmp:
        n_images = -(-(max(sizes) + extra) // REGIONS_PER_IMAGE)
        env = setup(args.pg, args.db, Path(tmp), args.clients, n_images)
        for rnd in range(args.rounds):
            for i, size in enumerate(sizes):  # sizes alternate: drifting machine load hits both
                fill_queue(env, size + extra, seed=rnd * len(sizes) + i)
                for clients, warmup, n in runs:
                    series[size, clients, "raw"].add(*asyncio.run(run_raw(env, clients, warmup, n)))
                requeue(env)
                with server(env, args.workers, args.app, args.server) as served:
                    for clients, warmup, n in runs:
                        measured = run_http(env, served, clients, warmup, n, args.client)
                        series[size, clients, "http"].add(*asyncio.run(measured))
                low[size] = min(low.get(size, size + extra), queued(env))
                if rnd == args.rounds - 1:
                    splits[size] = breakdown(env, args.breakdown)
                    if size == max(sizes):
                        plan = explain(env)
                print(f"  round {rnd + 1}, {size:,} queued: done", file=sys.stderr)
        env.db.dispose()
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{args.db}"')

    print(f"## lease latency, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {args.rounds} rounds of {args.leases} measured leases "
        f"after {args.warmup} warm-up ({args.single} after 20 for one client) per setting; "
        f"{server_label(args)}, rate limit off; {args.client} HTTP "
        f"client; server, PostgreSQL and load generator on one machine; "
        f"{time.perf_counter() - started:.0f} s in all\n"
    )
    print(
        "| queued | clients | raw SQL p50 / p99 ms | raw leases/s | HTTP p50 / p99 ms "
        "| HTTP p99 per round | HTTP leases/s | HTTP / raw p50 | HTTP / raw p99 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in sizes:
        for clients, _, _ in runs:
            raw, http = series[size, clients, "raw"], series[size, clients, "http"]
            print(
                f"| ≥ {low[size]:,} | {clients} | {raw.p50:.1f} / {raw.p99:.1f} | {raw.rate:.0f} "
                f"| {http.p50:.1f} / {http.p99:.1f} | {http.spread} | {http.rate:.0f} "
                f"| {http.p50 / raw.p50:.1f}x | {http.p99 / raw.p99:.1f}x |"
            )
    if len(sizes) > 1:
        for clients, _, _ in runs:
            small, large = series[sizes[0], clients, "http"], series[sizes[-1], clients, "http"]
            print(
                f"\nHTTP, {clients} client(s), {sizes[-1]:,} vs {sizes[0]:,} queued: p50 "
                f"{large.p50 / small.p50:.2f}x, p99 {large.p99 / small.p99:.2f}x "
                "(target: within 1.5x)"
            )
    print("\nCPU of the measured HTTP leases (all rounds; /proc, user + system):\n")
    print("| queued | clients | CPU ms per lease | cores busy (machine) |")
    print("| --- | ---: | --- | --- |")
    for size in sizes:
        for clients, _, _ in runs:
            http = series[size, clients, "http"]
            total = CpuShare.pooled(http.cpu)
            print(f"| {size:,} | {clients} | {total.per(len(http.latencies))} | {total.cores()} |")
    worst = max(series[size, args.clients, "http"].p99 for size in sizes)
    print(f"\nHTTP p99 at {args.clients} clients: {worst:.0f} ms (target: under 150 ms, issue 17)")
    print("\nOne lease at a time, in-process, median ms of its parts:\n")
    print("| queued | " + " | ".join(next(iter(splits.values()))) + " |")
    print("| --- |" + " ---: |" * len(next(iter(splits.values()))))
    for size, parts in splits.items():
        print(f"| {size:,} | " + " | ".join(f"{v:.2f}" for v in parts.values()) + " |")
    print(f"\nEXPLAIN ANALYZE of the lease query at {sizes[-1]:,} queued:\n\n```\n{plan}\n```")
    verdict = "uses ix_tasks_queue" if "ix_tasks_queue" in plan else "DOES NOT use ix_tasks_queue"
    print(f"\n{verdict}; {'a Seq Scan!' if 'Seq Scan' in plan else 'no Seq Scan'}.")


if __name__ == "__main__":
    main()
