"""Annotators working while the test breaks things: each thread leases a task, labels its
region, submits, and retries a failed submission with the same idempotency key (what the
annotator page does), recording every response. ``acknowledged`` is the list of submissions
the service confirmed (201/200): each must be in the database at the end."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Outcome:
    t: float
    route: str
    status: int  # 0: no HTTP response (connection refused or reset)
    ms: float
    detail: str = ""


@dataclass
class Annotator:
    base_url: str
    token: str
    project_id: int
    think_s: float = 0.05
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: list[dict[str, Any]] = field(default_factory=list)

    def _call(self, client: httpx.Client, route: str, method: str, url: str, **kw: Any):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        try:
            r = client.request(method, url, **kw)
        except httpx.TransportError as exc:
            ms = (time.monotonic() - t0) * 1000
            self.outcomes.append(Outcome(t0, route, 0, ms, type(exc).__name__))
            return None
        ms = (time.monotonic() - t0) * 1000
        detail = ""
        if r.status_code >= 400:
            try:
                detail = str(r.json().get("detail", ""))
            except ValueError:
                detail = r.text[:200]
        self.outcomes.append(Outcome(t0, route, r.status_code, ms, detail))
        return r

    def run(self, stop: threading.Event) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=30) as client:
            while not stop.is_set():
                r = self._call(client, "lease", "POST", f"/projects/{self.project_id}/tasks/next")
                if r is None or r.status_code != 200:
                    time.sleep(0.2)
                    continue
                lease = r.json()
                task_id = lease["task"]["id"]
                body = {
                    "classes": {str(region): 0 for region in lease["task"]["regions"]},
                    "idempotency_key": uuid.uuid4().hex,
                }
                time.sleep(self.think_s)
                # Retry until acknowledged: a label is paid work. Give up only at the very end.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    r = self._call(client, "submit", "POST", f"/tasks/{task_id}/submit", json=body)
                    if r is not None and r.status_code in (200, 201):
                        rev = r.json()["revision"]
                        self.acknowledged.append(
                            {"key": body["idempotency_key"], "revision_id": rev["id"]}
                        )
                        break
                    if r is not None and r.status_code not in (429, 503):
                        break  # a real refusal (lease expired, task gone): not acknowledged
                    time.sleep(0.3)


class Crew:
    """``n`` annotators on their own threads."""

    def __init__(self, annotators: list[Annotator]) -> None:
        self.annotators = annotators
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=a.run, args=(self.stop,)) for a in annotators]

    def __enter__(self) -> Crew:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)

    def outcomes(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        return sorted(
            (o for a in self.annotators for o in a.outcomes if since <= o.t <= until),
            key=lambda o: o.t,
        )

    @property
    def acknowledged(self) -> list[dict[str, Any]]:
        return [ack for a in self.annotators for ack in a.acknowledged]


def lost_labels(db: Any, acknowledged: list[dict[str, Any]]) -> list[str]:
    """Idempotency keys of acknowledged submissions whose label revision is not in the
    database (looked up by the revision id the service answered, and checked by key)."""
    from sqlalchemy import select

    from activeseg.core.tables import LabelRevision

    ids = [a["revision_id"] for a in acknowledged]
    with db.session() as s:
        stored = dict(
            s.execute(
                select(LabelRevision.id, LabelRevision.idempotency_key).where(
                    LabelRevision.id.in_(ids)
                )
            ).all()
        )
    return [
        a["key"]
        for a in acknowledged
        if not str(stored.get(a["revision_id"]) or "").endswith(f":{a['key']}")
    ]


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def project_with_crew(stack: Any, n: int = 4) -> tuple[int, list[Annotator]]:
    """A `digits` project (48 canvases) with every region queued, and ``n`` annotators who are
    members: enough work that they never run dry during an outage test."""
    from tests.utils import make_user, run_job_inline
    from tests.worker.test_loop_integration import digits_project

    admin = stack.client(stack.admin_token)
    pid, _ = digits_project(admin, n=48, batch_size=2000, per_image_cap=None)
    run_job_inline(stack, pid, "build_queue")
    members = []
    for _ in range(n):
        uid, token = make_user(admin, "annotator")
        assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
        members.append(Annotator(stack.base_url, token, pid))
    return pid, members
