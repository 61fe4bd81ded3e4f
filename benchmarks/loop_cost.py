"""What one annotator loop costs the server, without HTTP: the lease and submit routes called
in this process, one at a time, against PostgreSQL.

Usage::

    python benchmarks/loop_cost.py [--loops 400] [--warmup 50]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Sets up a throw-away database as benchmarks/lease_latency.py does (256x256 images in 16-px
grid tiles, 4,000 queued tasks) and runs ``--loops`` loops of ``routes.tasks.lease_next`` then
``routes.tasks.submit`` (one class for the task's region), each route in its own transaction as
the HTTP server runs it. Prints one JSON line: median and mean milliseconds (wall) of each
route and the process CPU per loop (user + system; the rest of a loop's wall time waits on
PostgreSQL). It measures the checkout it lies in: run its copy in two checkouts in turn to
compare two versions of the routes on equal terms.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--loops", type=int, default=400)
parser.add_argument("--warmup", type=int, default=50)
parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
args = parser.parse_args()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "benchmarks"))

from lease_latency import fill_queue, setup  # noqa: E402

from activeseg.api.routes import tasks as routes  # noqa: E402
from activeseg.core.storage import open_store  # noqa: E402

# The routes as they run in their thread (the app wraps them to run in the annotation lane).
LEASE = inspect.unwrap(routes.lease_next)
SUBMIT = inspect.unwrap(routes.submit)


class _Request:  # what submit reads of the request: the app's dispatcher, never called here
    class app:  # noqa: N801
        class state:  # noqa: N801
            @staticmethod
            def dispatch(job_id: int) -> bool:
                raise AssertionError("no retrain is configured")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="activeseg-bench-") as tmp:
        env = setup(args.pg, "activeseg_bench_loop", Path(tmp), 8, 20)
        fill_queue(env, args.loops + args.warmup + 100, seed=1)
        store = open_store(env.settings.storage_url)
        lease_ms: list[float] = []
        submit_ms: list[float] = []

        def loop(i: int) -> None:
            token = env.users[i % len(env.users)][1]
            t0 = time.perf_counter()
            answer: Any = LEASE(env.pid, token, env.db, store, env.settings)
            task = json.loads(answer.body)["task"]
            t1 = time.perf_counter()
            body = routes.SubmitBody(classes={task["regions"][0]: 1})
            done = SUBMIT(task["id"], body, token, env.db, store, _Request(), None)  # type: ignore[arg-type]
            assert done.status_code == 201, done.body
            t2 = time.perf_counter()
            lease_ms.append(1000 * (t1 - t0))
            submit_ms.append(1000 * (t2 - t1))

        for i in range(args.warmup):
            loop(i)
        lease_ms.clear()
        submit_ms.clear()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(args.loops):
            loop(i)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        env.db.dispose()
    print(
        json.dumps(
            {
                "repo": str(REPO),
                "loops": args.loops,
                "lease_median_ms": round(statistics.median(lease_ms), 3),
                "lease_mean_ms": round(statistics.fmean(lease_ms), 3),
                "submit_median_ms": round(statistics.median(submit_ms), 3),
                "submit_mean_ms": round(statistics.fmean(submit_ms), 3),
                "cpu_ms_per_loop": round(1000 * cpu / args.loops, 3),
                "wall_ms_per_loop": round(1000 * wall / args.loops, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
