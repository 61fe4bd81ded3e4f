"""GET /metrics over real HTTP: exact values after a known sequence of requests and jobs.

Counters and the histogram are process-wide (every app of this test process shares them), so
the tests compare a scrape before and after; the database gauges are per project and exact.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from activeseg.core.tables import Job
from tests.conftest import Stack
from tests.load.server import server_process
from tests.utils import (
    build_queue_inline,
    grid_project,
    image_bytes,
    make_project,
    make_user,
    run_job_inline,
    untrained_version,
    upload,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
LEASE = "/projects/{project_id}/tasks/next"
SUBMIT = "/tasks/{task_id}/submit"


def scrape(base_url: str) -> tuple[Samples, str]:
    """Every sample of an unauthenticated scrape, by (sample name, labels); and the text."""
    r = httpx.get(f"{base_url}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"sample twice: {key}"
            samples[key] = s.value
    return samples, r.text


def value(samples: Samples, name: str, **labels: Any) -> float:
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def requests_count(samples: Samples, method: str, route: str, status: int) -> float:
    return value(
        samples,
        "activeseg_http_request_duration_seconds_count",
        method=method,
        route=route,
        status=status,
    )


def test_metrics_after_upload_queue_two_leases_and_a_submission(
    stack: Stack, admin: httpx.Client
) -> None:
    before, _ = scrape(stack.base_url)
    project = grid_project(admin)
    pid = project["id"]
    files = [(f"m{i}.png", image_bytes(32, 32, seed=300 + i)) for i in range(3)]
    assert upload(admin, pid, *files).status_code == 201
    build_queue_inline(stack, pid)  # 3 images x 4 tiles of 16 px, batch of 6: 6 tasks
    uid, token = make_user(admin, "annotator")
    assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
    with stack.client(token) as ann:
        leases = [ann.post(f"/projects/{pid}/tasks/next") for _ in range(2)]
        assert [r.status_code for r in leases] == [200, 200]
        task = leases[0].json()["task"]
        answer = {"classes": {str(task["regions"][0]): 1}, "idempotency_key": f"metrics-{pid}"}
        assert ann.post(f"/tasks/{task['id']}/submit", json=answer).status_code == 201
        # The same answer again stores nothing new: not a second label.
        assert ann.post(f"/tasks/{task['id']}/submit", json=answer).status_code == 200
    assert admin.get("/no/such/route/12345").status_code == 404
    after, text = scrape(stack.base_url)

    # Gauges read from the database: exact, per project.
    assert value(after, "activeseg_queue_depth", project_id=pid) == 4
    tasks = {
        dict(labels)["state"]: v
        for labels, v in series(after, "activeseg_tasks").items()
        if dict(labels)["project_id"] == str(pid)
    }
    assert tasks == {"queued": 4, "leased": 1, "submitted": 1}
    # Jobs by kind and state: exactly one more build_queue, succeeded; nothing else moved.
    jobs_before, jobs_after = series(before, "activeseg_jobs"), series(after, "activeseg_jobs")
    moved = {
        tuple(sorted(labels)): jobs_after.get(labels, 0) - jobs_before.get(labels, 0)
        for labels in jobs_before.keys() | jobs_after.keys()
        if jobs_after.get(labels, 0) != jobs_before.get(labels, 0)
    }
    assert moved == {(("kind", "build_queue"), ("state", "succeeded")): 1}

    # Counters: process-wide, so compared with the scrape before.
    def delta(name: str) -> float:
        return value(after, name, project_id=pid) - value(before, name, project_id=pid)

    # Per project: this project's series, no other's (and no series without a project).
    assert delta("activeseg_tasks_leased_total") == 2
    assert delta("activeseg_labels_submitted_total") == 1
    assert value(after, "activeseg_tasks_leased_total") == 0

    # The histogram is labelled by route template, never by the raw path.
    def requests(method: str, route: str, status: int) -> float:
        return requests_count(after, method, route, status) - requests_count(
            before, method, route, status
        )

    assert requests("POST", LEASE, 200) == 2
    assert requests("POST", SUBMIT, 201) == 1
    assert requests("POST", SUBMIT, 200) == 1
    assert requests("GET", "unmatched", 404) == 1
    bucket_inf = value(
        after,
        "activeseg_http_request_duration_seconds_bucket",
        method="POST",
        route=LEASE,
        status=200,
        le="+Inf",
    )
    assert bucket_inf == requests_count(after, "POST", LEASE, 200)
    routes = {
        dict(labels)["route"]
        for labels in series(after, "activeseg_http_request_duration_seconds_count")
    }
    assert LEASE in routes and "/metrics" in routes
    assert not [r for r in routes if re.search(r"/\d+(/|$)", r)], routes

    # Unauthenticated, so it shows counts and ids only: no names.
    assert project["name"] not in text
    assert "/metrics" not in admin.get("/openapi.json").json()["paths"]


def test_scoring_throughput_and_images_scored_come_from_the_jobs(
    stack: Stack, admin: httpx.Client
) -> None:
    pid = make_project(admin, n_classes=3, region_kind="grid", region_size=16)["id"]
    files = [(f"s{i}.png", image_bytes(32, 32, seed=400 + i)) for i in range(3)]
    assert upload(admin, pid, *files).status_code == 201
    mv_id = untrained_version(stack, pid, in_channels=3, n_classes=3, depth=2, activate=False)
    # Two images per part: the pass fans out into parts of 2 and 1 images.
    parent = run_job_inline(
        stack, pid, "score_pool", {"model_version_id": mv_id, "chunk_images": 2}
    )
    with stack.db.session() as s:  # type: ignore[attr-defined]
        jobs = s.scalars(select(Job).where(Job.project_id == pid).order_by(Job.id)).all()
        assert [(j.id == parent, j.state) for j in jobs] == [
            (True, "succeeded"),
            (False, "succeeded"),
            (False, "succeeded"),
        ]
        parts = [j for j in jobs if j.id != parent]
        assert [j.result["images"] for j in parts] == [2, 1]
        for j in parts:
            rate = j.result["images_per_s"]
            assert rate > 0 and rate == pytest.approx(
                j.result["images"] / j.result["seconds"], 0.01
            )
        latest = max(parts, key=lambda j: (j.finished_at, j.id))
    samples, _ = scrape(stack.base_url)
    assert value(samples, "activeseg_images_scored_total", project_id=pid) == 3
    assert (
        value(samples, "activeseg_score_images_per_second", project_id=pid)
        == latest.result["images_per_s"]
    )
    assert value(samples, "activeseg_metrics_database_up") == 1


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_multiprocess_mode_sums_two_api_workers(stack: Stack, tmp_path: Path) -> None:
    """uvicorn --workers 2 with PROMETHEUS_MULTIPROC_DIR: whichever process answers the
    scrape, it counts the requests both served; the database gauges appear once."""
    folder = tmp_path / "prom"
    folder.mkdir()
    with server_process({**stack.env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}, 2) as url:
        before, _ = scrape(url)
        for i in range(10):  # a new connection each: the kernel spreads them over the workers
            assert httpx.get(f"{url}/no/such/route/{i}").status_code == 404
        scrapes = [scrape(url)[0] for _ in range(4)]
    assert any(name.startswith("histogram_") for name in os.listdir(folder))
    for after in scrapes:
        assert (
            requests_count(after, "GET", "unmatched", 404)
            - requests_count(before, "GET", "unmatched", 404)
            == 10
        )
        assert value(after, "activeseg_metrics_database_up") == 1
