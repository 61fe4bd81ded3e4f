"""The load generators' lean HTTP client (benchmarks/lean_http.py) against the real server:
status and body as sent, one kept-alive connection, a new one after the idle expiry."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.conftest import Stack

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import pytest  # noqa: E402
from lean_http import CpuShare, LeanClient  # noqa: E402


def test_lean_client_reads_answers_on_one_kept_alive_connection(stack: Stack) -> None:
    async def run() -> None:
        client = LeanClient(stack.base_url, {"Authorization": "Bearer not-a-token"})
        status, body = await client.request("GET", "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        first = client._writer
        status, body = await client.post("/projects/1/tasks/next")
        assert status == 401 and json.loads(body) == {"detail": "invalid API token"}
        status, body = await client.post("/tasks/1/submit", {"classes": {"1": 0}})
        assert status == 401  # a JSON body, sent with its length: the answer still reads
        assert client._writer is first  # one connection for all three
        client.keepalive_expiry = 0.0  # every connection counts as idle too long
        assert (await client.request("GET", "/health"))[0] == 200
        assert client._writer is not first
        await client.aclose()

    asyncio.run(run())


def test_cpu_shares_pool_each_server_worker_weighted_by_its_span() -> None:
    a = CpuShare(10, 1.3, 0.2, 0.03, 0.9, workers=(0.7, 0.6))
    b = CpuShare(30, 1.1, 0.2, 0.03, 0.9, workers=(0.6, 0.5))
    pooled = CpuShare.pooled([a, b])
    assert pooled.workers == pytest.approx((0.625, 0.525))
    assert pooled.server == pytest.approx(1.15)
    assert "server 1.15 (0.62 + 0.53)," in pooled.cores()
    # Spans with different numbers of workers have no per-worker figure.
    assert CpuShare.pooled([a, CpuShare(10, 1.0, 0.2, 0.03, 0.9, workers=(1.0,))]).workers == ()
