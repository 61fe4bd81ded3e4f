"""An annotation team with realistic think time, over real HTTP against PostgreSQL (issue 16).

Usage::

    python benchmarks/team_load.py [--annotators 200] [--queued 100000] [--overlap 2]
        [--think 3,10] [--duration 120] [--warmup 15] [--workers 2] [--spare 0]
        [--app activeseg.api.main:app]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

A throw-away database (``activeseg_bench_team``, dropped and made again) holds one project of
256x256 images cut in 16-px grid tiles, ``--overlap`` answers per task, and ``--queued`` queued
tasks (random priorities; the set-up of benchmarks/lease_latency.py). ``--annotators``
simulated annotators, one token each, loop for ``--duration`` seconds: lease
(``POST /projects/{id}/tasks/next``), think for a uniform random time in ``--think`` seconds,
submit one class for the region (``POST /tasks/{id}/submit``). Latencies are kept from
``--warmup`` seconds on (the first requests open connections and load caches). The server is
``activeseg api --processes N`` in its own process (``--server`` for another way to run
the processes).

Reported: lease and submit latency (p50, p99, max), request errors (any status other than
200/201/204), double hand-outs (a task handed to a second annotator while the first still
held it, seen by the load generator), and from the database afterwards: answers per
(task, annotator) (must be at most 1) and tasks with more answers than the overlap (must be
none). Targets (issue 16): p99 < 50 ms, 0 errors, 0 double hand-outs. Server, PostgreSQL and
load generator share the machine.

The annotator loop of issue 17 is the same driver without think time, the client loop a
labelling tool runs against its backend (next, then submit, N tools at once)::

    python benchmarks/team_load.py --annotators 32 --think 0,0 --overlap 1 \
        --queued 1000 --spare 20000 --duration 60 --warmup 10

``--spare`` keeps the queue from draining during the run (the end count is printed).
Targets (issue 17): >= 150 loops/s, submit p99 < 200 ms, at 1,000 and 100,000 queued.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from lean_http import CpuMeter, CpuShare, add_client_option, open_client  # noqa: E402
from lease_latency import (  # noqa: E402
    REGIONS_PER_IMAGE,
    Env,
    add_server_option,
    check_server_option,
    fill_queue,
    server,
    server_label,
    setup,
)

from activeseg.core.tables import Project  # noqa: E402


@dataclass
class Record:
    lease_s: list[float] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    empty: int = 0
    errors: list[str] = field(default_factory=list)
    held: dict[int, int] = field(default_factory=dict)
    double: list[tuple[int, int, int]] = field(default_factory=list)


async def annotator(
    url: str,
    env: Env,
    uid: int,
    token: str,
    rec: Record,
    think: tuple[float, float],
    span: tuple[float, float],
    client: str,
) -> None:
    measured_from, end = span
    rng = random.Random(uid)
    http = open_client(client, url, token)  # drops a connection idle for 4 s (uvicorn: 5)
    try:
        await asyncio.sleep(rng.uniform(0, think[1]))  # annotators do not start in step
        while time.monotonic() < end:
            t0 = time.perf_counter()
            status, body = await http.post(f"/projects/{env.pid}/tasks/next")
            if time.monotonic() >= measured_from:
                rec.lease_s.append(time.perf_counter() - t0)
            if status == 204:
                rec.empty += 1
                await asyncio.sleep(rng.uniform(*think))
                continue
            if status != 200:
                rec.errors.append(f"lease {status}: {body[:120]!r}")
                await asyncio.sleep(1)
                continue
            task = json.loads(body)["task"]
            tid, region = task["id"], task["regions"][0]
            if tid in rec.held:
                rec.double.append((tid, rec.held[tid], uid))
            rec.held[tid] = uid
            await asyncio.sleep(rng.uniform(*think))
            rec.held.pop(tid, None)  # the hold ends as the answer is sent
            t0 = time.perf_counter()
            status, body = await http.post(
                f"/tasks/{tid}/submit", {"classes": {str(region): (tid * 7) % 3}}
            )
            if time.monotonic() >= measured_from:
                rec.submit_s.append(time.perf_counter() - t0)
            if status != 201:
                rec.errors.append(f"submit {status}: {body[:120]!r}")
    finally:
        await http.aclose()


def percentiles(values: list[float]) -> str:
    if not values:
        return "–"
    ms = 1000 * np.asarray(values)
    return f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 99):.1f} / {ms.max():.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=200)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument(
        "--spare",
        type=int,
        default=0,
        help="tasks queued beyond --queued, so that a run without think time never drains "
        "the queue below --queued (about duration x loops/s)",
    )
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--think", default="3,10", help="min,max seconds per task")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2, help="API processes")
    add_server_option(parser)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    add_client_option(parser)
    args = parser.parse_args()
    check_server_option(parser, args)
    think = tuple(float(x) for x in args.think.split(","))
    assert len(think) == 2 and 0 <= think[0] <= think[1]

    with tempfile.TemporaryDirectory() as tmp:
        total = args.queued + args.spare
        n_images = math.ceil(total / REGIONS_PER_IMAGE)
        t0 = time.perf_counter()
        env = setup(args.pg, "activeseg_bench_team", Path(tmp), args.annotators, n_images)
        with env.db.session() as s:
            project = s.get(Project, env.pid)
            assert project is not None
            project.settings = {**project.settings, "overlap": args.overlap}
        fill_queue(env, total, seed=16)
        set_up = time.perf_counter() - t0
        rec = Record()
        with server(env, args.workers, args.app, args.server) as served:
            begin = time.monotonic()
            span = (begin + args.warmup, begin + args.warmup + args.duration)
            meter = CpuMeter(served.pid, urlsplit(served.url).port)
            cpu: list[CpuShare] = []

            async def measure() -> None:  # the CPU of the measured span only
                await asyncio.sleep(span[0] - time.monotonic())
                meter.start()
                await asyncio.sleep(span[1] - time.monotonic())
                cpu.append(meter.stop())

            async def run() -> None:
                await asyncio.gather(
                    measure(),
                    *(
                        annotator(served.url, env, uid, token, rec, think, span, args.client)
                        for uid, token in env.users
                    ),
                )

            asyncio.run(run())
            wall = args.duration
        with psycopg.connect(env.dsn) as conn:
            twice = conn.execute(
                "SELECT count(*) FROM (SELECT task_id, user_id FROM task_answers "
                "GROUP BY task_id, user_id HAVING count(*) > 1) t"
            ).fetchone()
            over = conn.execute(
                "SELECT count(*) FROM tasks WHERE answers > %s", (args.overlap,)
            ).fetchone()
            answers, finished, left = conn.execute(
                "SELECT (SELECT count(*) FROM task_answers), "
                "(SELECT count(*) FROM tasks WHERE state = 'submitted'), "
                "(SELECT count(*) FROM tasks WHERE state = 'queued')"
            ).fetchone() or (0, 0, 0)
        env.db.dispose()

    print(
        f"## Annotation team load ({platform.node()}, {server_label(args)}, rate limit off, "
        f"{args.client} HTTP client)\n"
    )
    print(
        f"{args.annotators} annotators, think {think[0]:g}-{think[1]:g} s, overlap "
        f"{args.overlap}, {total:,} queued tasks at the start and {left:,} at the end, "
        f"{wall:.0f} s measured after "
        f"{args.warmup:.0f} s of warm-up "
        f"(set-up {set_up:.0f} s)\n"
    )
    print("| | count | p50 / p99 / max (ms) |")
    print("| --- | ---: | --- |")
    print(f"| lease | {len(rec.lease_s)} | {percentiles(rec.lease_s)} |")
    print(f"| submit | {len(rec.submit_s)} | {percentiles(rec.submit_s)} |")
    print()
    print(
        f"loops/s {len(rec.submit_s) / wall:.1f}; errors {len(rec.errors)}; empty leases "
        f"{rec.empty}; double hand-outs {len(rec.double)}; (task, annotator) answered twice "
        f"{twice[0] if twice else '?'}; tasks over the overlap {over[0] if over else '?'}; "
        f"answers stored {answers}, tasks finished (consensus written) {finished}"
    )
    print(f"\nCPU per loop (lease + submit): {cpu[0].per(len(rec.submit_s))}; {cpu[0].cores()}")
    if rec.errors:
        print("\nfirst errors:", *rec.errors[:5], sep="\n- ")


if __name__ == "__main__":
    main()
