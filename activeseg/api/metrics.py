"""Prometheus metrics at ``GET /metrics``: request latency per route template, lease, label and
skip counters, and queue, job and scoring figures read from the database at scrape time.

Why the gauges come from the database: the API may run as several processes and scoring runs
in Celery worker processes, so a gauge kept in one process's memory would be right for that
process only. Counts read at scrape time (GROUP BY over indexed columns) are right however many
processes there are. The counters and the histogram live in process memory; with several API
processes set ``PROMETHEUS_MULTIPROC_DIR`` (an empty folder, cleared before the API starts) and
prometheus_client's multiprocess mode sums them over the processes.

Why a plain ASGI middleware for the histogram: Starlette's ``BaseHTTPMiddleware`` runs every
request through an extra task and memory stream; this one only wraps ``send``. Routes are
labelled by their template (``/tasks/{task_id}/submit``), never the raw path, so the number of
series stays bounded; a path no route matches is ``unmatched``.

``/metrics`` needs no token (scrapers have none), so it shows counts and numeric project ids
only: no names, users or file names.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activeseg.core.db import Database
from activeseg.core.tables import Job, JobState, Project, Task, TaskState

log = logging.getLogger(__name__)

# Created unregistered: each app registers them in its own registry (single process), or
# prometheus_client's multiprocess files carry them (PROMETHEUS_MULTIPROC_DIR).
REQUEST_DURATION = Histogram(
    "activeseg_http_request_duration_seconds",
    "HTTP request duration, by method, route template and status code",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=None,
)
# The task counters are per project (a bounded label: projects are few), never per user: the
# stats route (GET /projects/{id}/annotators) shows per-user figures to those allowed to see
# them, and /metrics needs no token.
TASKS_LEASED = Counter(
    "activeseg_tasks_leased",
    "Tasks leased to annotators (POST /projects/{id}/tasks/next), by project",
    ["project_id"],
    registry=None,
)
LABELS_SUBMITTED = Counter(
    "activeseg_labels_submitted",
    "Task answers stored as new label revisions (POST /tasks/{id}/submit; retries not "
    "counted), by project",
    ["project_id"],
    registry=None,
)
TASKS_SKIPPED = Counter(
    "activeseg_tasks_skipped",
    "Tasks skipped by annotators (POST /tasks/{id}/skip), by project",
    ["project_id"],
    registry=None,
)
UNMATCHED = "unmatched"
# Anything else a client sends as a method is one label, not a new series per made-up verb.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def flat_routes(routes: Iterable[BaseRoute]) -> list[Any]:
    """Every route of an app, each with ``path`` (its template), ``methods`` and ``matches``.
    Recent FastAPI keeps an included router as one route: ``iter_route_contexts`` expands it;
    older versions copied the routes into the app, so the list is already flat."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined]
    except ImportError:
        return list(routes)
    return list(iter_route_contexts(list(routes)))


def route_template(routes: list[Any], scope: Scope) -> str:
    """The template of the route serving ``scope`` (``UNMATCHED`` when none does). The router
    leaves the route in ``scope["route"]``; requests answered before routing (413, 429) are
    matched here."""
    route = scope.get("route")
    if route is None:
        for candidate in routes:
            if candidate.matches(scope)[0] is not Match.NONE:  # PARTIAL: wrong method, 405
                route = candidate
                break
    return getattr(route, "path", None) or UNMATCHED


class RequestMetricsMiddleware:
    """Observe every HTTP request's duration into ``REQUEST_DURATION``."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self._routes = routes  # the app's list: expanded on first need, when it is complete
        self._flat: list[Any] | None = None

    def template(self, scope: Scope) -> str:
        if self._flat is None and "route" not in scope:
            self._flat = flat_routes(self._routes)
        return route_template(self._flat or [], scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            REQUEST_DURATION.labels(method, self.template(scope), str(status)).observe(
                time.perf_counter() - started
            )


class DatabaseCollector(Collector):
    """Queue, task, job and scoring figures, read from the database at each scrape.

    Every query is one GROUP BY: tasks over ``ix_tasks_project_state`` (project_id, state),
    jobs over the jobs table (small: one row per job, not per image).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> Iterator[Metric]:
        # Names only: the registry checks them for duplicates without querying the database.
        yield GaugeMetricFamily("activeseg_queue_depth", "")
        yield GaugeMetricFamily("activeseg_tasks", "")
        yield GaugeMetricFamily("activeseg_jobs", "")
        yield CounterMetricFamily("activeseg_images_scored", "")
        yield GaugeMetricFamily("activeseg_score_images_per_second", "")
        yield GaugeMetricFamily("activeseg_metrics_database_up", "")
        yield GaugeMetricFamily("activeseg_metrics_database_seconds", "")

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            rows = self._read()
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable: %s", exc)
            yield GaugeMetricFamily(
                "activeseg_metrics_database_up", "1 if this scrape could read the database", 0
            )
            return
        elapsed = time.perf_counter() - started
        projects, tasks, jobs, scored, rates = rows

        depth = GaugeMetricFamily(
            "activeseg_queue_depth",
            "Tasks waiting to be leased (state queued)",
            labels=["project_id"],
        )
        queued = {p: n for p, state, n in tasks if state == TaskState.queued.value}
        for project_id in projects:
            depth.add_metric([str(project_id)], queued.get(project_id, 0))
        yield depth

        by_state = GaugeMetricFamily(
            "activeseg_tasks", "Tasks by project and state", labels=["project_id", "state"]
        )
        for project_id, state, n in tasks:
            by_state.add_metric([str(project_id), state], n)
        yield by_state

        by_kind = GaugeMetricFamily(
            "activeseg_jobs", "Jobs by kind and state", labels=["kind", "state"]
        )
        for kind, state, n in jobs:
            by_kind.add_metric([kind, state], n)
        yield by_kind

        images = CounterMetricFamily(
            "activeseg_images_scored",
            "Images scored by finished score_pool jobs (parts of a fanned-out pass included)",
            labels=["project_id"],
        )
        for project_id, n in scored:
            images.add_metric([str(project_id)], n or 0)
        yield images

        rate = GaugeMetricFamily(
            "activeseg_score_images_per_second",
            "Images per second of the project's most recently finished score_pool job "
            "(one worker process; model loading included)",
            labels=["project_id"],
        )
        for project_id, value in rates:
            rate.add_metric([str(project_id)], value)
        yield rate

        yield GaugeMetricFamily(
            "activeseg_metrics_database_up", "1 if this scrape could read the database", 1
        )
        yield GaugeMetricFamily(
            "activeseg_metrics_database_seconds",
            "Time this scrape spent reading the database",
            elapsed,
        )

    def _read(self) -> tuple[list[int], list[Any], list[Any], list[Any], list[Any]]:
        score_done = (Job.kind == "score_pool", Job.state == JobState.succeeded.value)
        images = Job.result["images"].as_integer()
        per_s = Job.result["images_per_s"].as_float()
        latest = (
            select(
                Job.project_id,
                per_s.label("per_s"),
                func.row_number()
                .over(partition_by=Job.project_id, order_by=(Job.finished_at.desc(), Job.id.desc()))
                .label("recency"),
            )
            .where(*score_done, Job.project_id.is_not(None), per_s.is_not(None))
            .subquery()
        )
        with self.db.session() as s:
            projects = list(s.scalars(select(Project.id).order_by(Project.id)))
            tasks = s.execute(
                select(Task.project_id, Task.state, func.count()).group_by(
                    Task.project_id, Task.state
                )
            ).all()
            jobs = s.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            ).all()
            scored = s.execute(
                select(Job.project_id, func.sum(images))
                .where(*score_done, Job.project_id.is_not(None))
                .group_by(Job.project_id)
            ).all()
            rates = s.execute(
                select(latest.c.project_id, latest.c.per_s).where(latest.c.recency == 1)
            ).all()
        return projects, list(tasks), list(jobs), list(scored), list(rates)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def metrics_registry(db: Database) -> CollectorRegistry:
    """What one app's ``/metrics`` shows: this process's (or, in multiprocess mode, all API
    processes') counters and histogram, plus the database figures."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in (
            REQUEST_DURATION,
            TASKS_LEASED,
            LABELS_SUBMITTED,
            TASKS_SKIPPED,
            PROCESS_COLLECTOR,
            PLATFORM_COLLECTOR,
            GC_COLLECTOR,
        ):
            registry.register(collector)
    registry.register(DatabaseCollector(db))
    return registry


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text format; no token needed (counts and ids only)."""
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )


def install_metrics(app: FastAPI, db: Database) -> None:
    """Add ``GET /metrics`` and the request histogram. Call after every other middleware, so
    the histogram also sees requests they answer themselves (413, 429)."""
    app.state.metrics_registry = metrics_registry(db)
    app.include_router(router)
    app.add_middleware(RequestMetricsMiddleware, routes=app.router.routes)
