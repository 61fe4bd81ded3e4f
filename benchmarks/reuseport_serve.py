"""N uvicorn processes on one port, each with a listening socket of its own (``SO_REUSEPORT``):
the kernel spreads new connections over them by a hash, where ``uvicorn --workers N`` shares
one socket and the first process to wake accepts every connection waiting.

Usage (what ``--server reuse-port`` of the load generators runs)::

    python benchmarks/reuseport_serve.py activeseg.api.main:app --port 8000 --workers 2

A benchmark launcher only, to compare with how ``activeseg api --processes N`` hands the
connections out (activeseg/admin/balancer.py; BENCHMARKS.md). SIGTERM
or SIGINT stops the processes (uvicorn finishes their open requests) and then this one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]


def _serve(app: str, host: str, port: int, factory: bool) -> None:
    import uvicorn

    sys.path.insert(0, str(REPO))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        app, factory=factory, log_level="warning", access_log=False, lifespan="off"
    )
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", help="module:attribute, or module:factory with --factory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--factory", action="store_true")
    args = parser.parse_args()
    spawn = mp.get_context("spawn")
    procs = [
        spawn.Process(target=_serve, args=(args.app, args.host, args.port, args.factory))
        for _ in range(args.workers)
    ]
    for p in procs:
        p.start()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: uvicorn's graceful shutdown

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
