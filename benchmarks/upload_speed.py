"""Bulk upload speed: images per second through the real API, one file per request vs batched.

Usage::

    python benchmarks/upload_speed.py [--images 1000] [--side 64] [--workers 4] [--rounds 2]

Serves ``uvicorn activeseg.api.main:app`` (one process, embedded SQLite and blob folder in a
throw-away folder, every setting at its default: limits included) in a subprocess stopped by
its pid at the end, and uploads ``--images`` distinct random PNGs of ``--side`` pixels square,
a fresh set and a fresh project per run, on three paths:

- ``one file per request``: the CLI's old loop, ``ApiClient.upload_file`` on ``--workers``
  threads (the in-run baseline);
- ``batched (engine)``: the CLI's engine, ``BulkUploader`` with its defaults (100 files or
  16 MiB per request, ``--workers`` requests in flight), in this process;
- ``batched (activeseg upload)``: the command itself in a subprocess, end to end (Python
  start-up, the journal, the summary line) as a user runs it.

Rounds alternate the paths, so a drifting machine load hits all three. Output: markdown on
stdout. Server and clients share the machine: on few cores the figures are CPU-bound and
include the clients' own cost.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from activeseg.client.api_client import ApiClient  # noqa: E402
from activeseg.client.bulk_upload import BulkUploader, LocalFile  # noqa: E402
from activeseg.core.db import Database  # noqa: E402
from activeseg.core.migrate import upgrade  # noqa: E402
from activeseg.core.services import auth  # noqa: E402
from activeseg.core.settings import Settings  # noqa: E402

PATHS = ("one file per request", "batched (engine)", "batched (activeseg upload)")


def write_pngs(folder: Path, n: int, side: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        path = folder / f"im{i:05d}.png"
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def admin_token(settings: Settings) -> str:
    upgrade(settings.database_url)
    db = Database(settings)
    with db.session() as s:
        _, token = auth.create_token(s, auth.create_user(s, "bench-admin", "admin"))
    db.dispose()
    return token


def child_env(data_dir: Path) -> dict[str, str]:
    """This process's environment without any ACTIVESEG_* but the data folder: every other
    setting, the limits included, at its default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVESEG_")}
    env.update(ACTIVESEG_DATA_DIR=str(data_dir), ACTIVESEG_LOG_LEVEL="WARNING")
    return env


@contextmanager
def server(data_dir: Path) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    cmd = [
        sys.executable, "-m", "uvicorn", "activeseg.api.main:app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--no-access-log", "--lifespan", "off",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(data_dir))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn server did not start")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def new_project(api: ApiClient, name: str) -> int:
    classes = [{"id": 0, "name": "bg"}, {"id": 1, "name": "fg"}]
    return int(api.create_project(name, classes)["id"])


def one_per_request(api: ApiClient, pid: int, files: list[Path], workers: int) -> int:
    with ThreadPoolExecutor(workers) as pool:
        return len(list(pool.map(lambda p: api.upload_file(pid, p), files)))


def batched_engine(api: ApiClient, pid: int, files: list[Path], workers: int) -> int:
    report = BulkUploader(api, pid, workers=workers).run([LocalFile.of(p) for p in files])
    assert not report.failed, report.failed
    return report.created


def batched_cli(url: str, token: str, pid: int, folder: Path, workers: int, home: Path) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVESEG_")}
    env.update(ACTIVESEG_URL=url, ACTIVESEG_TOKEN=token, XDG_CACHE_HOME=str(home))
    cmd = [sys.executable, "-m", "activeseg.cli", "upload", str(pid), str(folder)]
    proc = subprocess.run(
        [*cmd, "--workers", str(workers)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"activeseg upload failed: {proc.stdout}\n{proc.stderr}")
    return int(re.findall(r"uploaded (\d+)", proc.stdout)[0])


def one_run(path: str, api: ApiClient, token: str, folder: Path, args: argparse.Namespace) -> float:
    """Images per second of one run of ``path`` into a new project; every image must land."""
    files = sorted(folder.glob("*.png"))
    pid = new_project(api, f"bench-{folder.name}")
    url, cache = str(api.http.base_url), folder.parent / "cache"
    start = time.perf_counter()
    if path == PATHS[0]:
        stored = one_per_request(api, pid, files, args.workers)
    elif path == PATHS[1]:
        stored = batched_engine(api, pid, files, args.workers)
    else:
        stored = batched_cli(url, token, pid, folder, args.workers, cache)
    wall = time.perf_counter() - start
    if stored != len(files):
        raise RuntimeError(f"{path}: stored {stored} images, expected {len(files)}")
    return len(files) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--side", type=int, default=64, help="image width and height, px")
    parser.add_argument("--workers", type=int, default=4, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    rates: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="activeseg-upload-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        token = admin_token(Settings(data_dir=data, database_url=f"sqlite:///{data}/activeseg.db"))
        with server(data) as url, ApiClient(url, token) as api:
            for rnd in range(args.rounds):
                for k, path in enumerate(PATHS):
                    folder = tmp / f"r{rnd}-{k}"
                    write_pngs(folder, args.images, args.side, seed=rnd * 10 + k)
                    rates[path].append(one_run(path, api, token, folder, args))
                    print(f"  round {rnd + 1}, {path}: {rates[path][-1]:.0f}/s", file=sys.stderr)
    report(args, rates, time.perf_counter() - started)


def report(args: argparse.Namespace, rates: dict[str, list[float]], seconds: float) -> None:
    base = statistics.median(rates[PATHS[0]])
    print(f"## bulk upload speed, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {args.images} random {args.side}x{args.side} PNGs per "
        f"run, {args.rounds} rounds, {args.workers} requests in flight; uvicorn "
        "activeseg.api.main:app (one process, embedded SQLite, every setting at its default) "
        f"and the clients on one machine; {seconds:.0f} s in all\n"
    )
    print("| path | images/s per round | median images/s | vs one file per request |")
    print("| --- | ---: | ---: | ---: |")
    for path in PATHS:
        median = statistics.median(rates[path])
        per_round = " / ".join(f"{r:.0f}" for r in rates[path])
        print(f"| {path} | {per_round} | {median:.0f} | {median / base:.1f}x |")


if __name__ == "__main__":
    main()
