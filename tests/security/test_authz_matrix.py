"""Who may call what: every route of the app against every kind of caller, with the expected
status of each cell written down in one table.

Why a table: authorisation is checked route by route (a dependency per route, then a project
lookup in the service), so one forgotten check is one silent hole. The table is compared with
``app.routes`` itself, so a new route without a row fails here until someone decides who may
call it.

Conventions this pins down (the service's own, see README "API"):

* 401 for no token, a malformed ``Authorization`` header, an unknown token, an expired token
  and a revoked token, on every non-exempt route, with a ``detail`` that says which;
* the role is checked before the project: a role too low is 403 (also for a project the caller
  is not a member of);
* a project the caller is not a member of does not exist for them: 404 (admins see all).

The expired and revoked tokens belong to admins, and the anonymous cells send the request an
admin would send successfully: a 401 there means the token was refused, nothing else.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select, update

from activeseg.core.services import auth
from activeseg.core.services import tasks as task_service
from activeseg.core.services.jobs import ACTIVE_STATES
from activeseg.core.tables import ApiToken, Base, Job, ModelVersion, Project, User
from tests.conftest import Stack
from tests.integrations.helpers import add_scored_model
from tests.utils import (
    build_queue_inline,
    grid_project,
    image_bytes,
    make_project,
    make_user,
    png_bytes,
    upload,
)

# The callers: five that must get 401, then members of the project (an annotator, a reviewer,
# an engineer), an admin (no membership needed), and an annotator and an engineer who are
# members of another project only.
REFUSED = ("anonymous", "malformed", "unknown", "expired", "revoked")
ALLOWED = ("annotator", "reviewer", "engineer", "admin", "other_annotator", "other_engineer")
PRINCIPALS = REFUSED + ALLOWED
MAY_LEASE = ("annotator", "reviewer", "engineer", "admin")

# Routes open without a token, and why.
EXEMPT = {
    "/health": "load balancers probe it; it reports only up/down per component",
    "/metrics": "Prometheus scrapes it; counters only, no project data",
    "/annotate": "the annotator page; it asks for a token, every API call it makes sends one",
    "/annotate/annotators": "the annotator statistics page; it asks for a token likewise",
    "/static/{name}": "the page's JS/CSS (a fixed allow-list of file names)",
    "/openapi.json": "the API description (no data)",
    "/docs": "Swagger UI over /openapi.json",
    "/docs/oauth2-redirect": "part of Swagger UI",
    "/redoc": "ReDoc over /openapi.json",
    "/docs-assets": "Swagger UI's and ReDoc's JS/CSS (the fastapi-offline package's files)",
}
# Label Studio's routes again under /k/{key}: the key in the path is the credential (Label
# Studio's own webhook sends no header). test_keyed_routes_need_their_projects_key covers them.
KEYED = "/ls/{project_id}/k/{key}"

# Expected status per route for (annotator, reviewer, engineer, admin, other_annotator,
# other_engineer); the five REFUSED callers get 401 everywhere. Members of the project are the
# annotator, the reviewer and the engineer; the admin is not a member. A reviewer may do what
# an annotator may, and the review routes (REVIEW_ROUTES): its column is the annotator's
# elsewhere (test_a_reviewer_is_an_annotator_who_may_review).
R = tuple[int, int, int, int, int, int]
MATRIX: dict[tuple[str, str], R] = {
    # users and tokens: not project-scoped
    ("GET", "/users/me"): (200, 200, 200, 200, 200, 200),
    ("POST", "/users"): (403, 403, 403, 201, 403, 403),
    ("GET", "/users"): (403, 403, 403, 200, 403, 403),
    ("POST", "/tokens"): (201, 201, 201, 201, 201, 201),
    ("GET", "/tokens"): (200, 200, 200, 200, 200, 200),
    # a token of the engineer member: its owner and admins may revoke it, nobody else sees it
    ("DELETE", "/tokens/{token_id}"): (404, 404, 200, 200, 404, 404),
    # projects
    ("POST", "/projects"): (403, 403, 201, 201, 403, 201),
    ("GET", "/projects"): (200, 200, 200, 200, 200, 200),
    ("GET", "/projects/{project_id}"): (200, 200, 200, 200, 404, 404),
    ("PATCH", "/projects/{project_id}"): (403, 403, 200, 200, 403, 404),
    ("POST", "/projects/{project_id}/members"): (403, 403, 204, 204, 403, 404),
    # images and masks
    ("POST", "/projects/{project_id}/images"): (403, 403, 201, 201, 403, 404),
    ("GET", "/projects/{project_id}/images"): (200, 200, 200, 200, 404, 404),
    ("GET", "/images/{image_id}"): (200, 200, 200, 200, 404, 404),
    ("PATCH", "/images/{image_id}"): (403, 403, 200, 200, 403, 404),
    ("DELETE", "/images/{image_id}"): (403, 403, 204, 204, 403, 404),
    ("GET", "/images/{image_id}/file"): (200, 200, 200, 200, 404, 404),
    ("PUT", "/images/{image_id}/mask"): (403, 403, 201, 201, 403, 404),
    ("GET", "/images/{image_id}/mask"): (200, 200, 200, 200, 404, 404),
    ("GET", "/images/{image_id}/revisions"): (200, 200, 200, 200, 404, 404),
    ("GET", "/annotate/images/{image_id}.png"): (200, 200, 200, 200, 404, 404),
    # jobs
    ("POST", "/projects/{project_id}/verify"): (403, 403, 202, 202, 403, 404),
    ("GET", "/projects/{project_id}/jobs"): (200, 200, 200, 200, 404, 404),
    ("GET", "/jobs/{job_id}"): (200, 200, 200, 200, 404, 404),
    ("POST", "/jobs/{job_id}/retry"): (403, 403, 200, 200, 403, 404),
    # the active-learning loop
    ("POST", "/projects/{project_id}/retrain"): (403, 403, 202, 202, 403, 404),
    ("POST", "/projects/{project_id}/score"): (403, 403, 202, 202, 403, 404),
    ("POST", "/projects/{project_id}/rounds"): (403, 403, 202, 202, 403, 404),
    ("GET", "/projects/{project_id}/rounds"): (200, 200, 200, 200, 404, 404),
    ("GET", "/projects/{project_id}/models"): (200, 200, 200, 200, 404, 404),
    ("GET", "/models/{model_id}"): (200, 200, 200, 200, 404, 404),
    ("POST", "/models/{model_id}/activate"): (403, 403, 200, 200, 403, 404),
    ("GET", "/images/{image_id}/uncertainty.png"): (200, 200, 200, 200, 404, 404),
    ("GET", "/images/{image_id}/prediction.png"): (200, 200, 200, 200, 404, 404),
    # annotation: any member leases; only the lease holder acts on a task
    ("POST", "/projects/{project_id}/tasks/next"): (200, 200, 200, 200, 404, 404),
    ("GET", "/projects/{project_id}/queue"): (200, 200, 200, 200, 404, 404),
    # per-annotator statistics: members see them (an annotator or a reviewer only their own
    # row)
    ("GET", "/projects/{project_id}/annotators"): (200, 200, 200, 200, 404, 404),
    ("GET", "/projects/{project_id}/agreement"): (200, 200, 200, 200, 404, 404),
    ("GET", "/tasks/{task_id}"): (200, 200, 200, 200, 404, 404),
    ("POST", "/tasks/{task_id}/heartbeat"): (200, 200, 200, 200, 404, 404),
    ("POST", "/tasks/{task_id}/release"): (200, 200, 200, 200, 404, 404),
    ("POST", "/tasks/{task_id}/skip"): (200, 200, 200, 200, 404, 404),
    ("POST", "/tasks/{task_id}/submit"): (201, 201, 201, 201, 404, 404),
    # the review stage: reviewers, engineers and admins (the role before the project); the
    # project has no disputed task (204), and the task of the decision (and of the review
    # lease's heartbeat and release) is the admin's plain lease, under nobody's review (409)
    ("POST", "/projects/{project_id}/reviews/next"): (403, 204, 204, 204, 403, 404),
    ("POST", "/tasks/{task_id}/review"): (403, 409, 409, 409, 403, 404),
    ("POST", "/tasks/{task_id}/review/heartbeat"): (403, 409, 409, 409, 403, 404),
    ("POST", "/tasks/{task_id}/review/release"): (403, 409, 409, 409, 403, 404),
    ("GET", "/users/me/rejections"): (200, 200, 200, 200, 200, 200),
    # reports
    ("GET", "/models/{model_id}/report"): (200, 200, 200, 200, 404, 404),
    ("POST", "/models/{model_id}/report"): (403, 403, 202, 202, 403, 404),
    ("GET", "/models/{model_id}/report.html"): (200, 200, 200, 200, 404, 404),
    ("GET", "/models/{model_id}/plots/{name}.png"): (200, 200, 200, 200, 404, 404),
    ("POST", "/projects/{project_id}/baseline"): (403, 403, 202, 202, 403, 404),
    ("GET", "/projects/{project_id}/baseline"): (200, 200, 200, 200, 404, 404),
    # export and import
    ("GET", "/projects/{project_id}/export"): (200, 200, 200, 200, 404, 404),
    ("POST", "/projects/{project_id}/import"): (403, 403, 200, 200, 403, 404),
    # outgoing webhooks: engineers only
    ("POST", "/projects/{project_id}/webhooks"): (403, 403, 201, 201, 403, 404),
    ("GET", "/projects/{project_id}/webhooks"): (403, 403, 200, 200, 403, 404),
    ("GET", "/projects/{project_id}/webhooks/{webhook_id}"): (403, 403, 200, 200, 403, 404),
    ("DELETE", "/projects/{project_id}/webhooks/{webhook_id}"): (403, 403, 204, 204, 403, 404),
    ("GET", "/projects/{project_id}/webhooks/{webhook_id}/deliveries"): (
        403,
        403,
        200,
        200,
        403,
        404,
    ),
    ("POST", "/projects/{project_id}/webhooks/{webhook_id}/ping"): (403, 403, 202, 202, 403, 404),
    # Label Studio ML backend: members; START_TRAINING needs an engineer (checked after the
    # project, so outsiders still get 404)
    ("GET", "/ls/{project_id}"): (200, 200, 200, 200, 404, 404),
    ("GET", "/ls/{project_id}/"): (200, 200, 200, 200, 404, 404),
    ("GET", "/ls/{project_id}/health"): (200, 200, 200, 200, 404, 404),
    ("POST", "/ls/{project_id}/setup"): (200, 200, 200, 200, 404, 404),
    ("POST", "/ls/{project_id}/predict"): (200, 200, 200, 200, 404, 404),
    ("POST", "/ls/{project_id}/webhook"): (403, 403, 201, 201, 404, 404),
    ("GET", "/ls/{project_id}/label_config"): (200, 200, 200, 200, 404, 404),
    ("GET", "/ls/{project_id}/versions"): (200, 200, 200, 200, 404, 404),
    # the ML-backend URL's keys: engineers of the project
    ("POST", "/projects/{project_id}/label-studio/keys"): (403, 403, 201, 201, 403, 404),
    ("GET", "/projects/{project_id}/label-studio/keys"): (403, 403, 200, 200, 403, 404),
    ("DELETE", "/projects/{project_id}/label-studio/keys/{key_id}"): (403, 403, 200, 200, 403, 404),
    # signed links: whoever may read the resource gets a link to it; keys are for admins
    ("POST", "/links"): (200, 200, 200, 200, 404, 404),
    ("GET", "/admin/link-keys"): (403, 403, 403, 200, 403, 403),
    ("POST", "/admin/link-keys/rotate"): (403, 403, 403, 201, 403, 403),
    ("DELETE", "/admin/link-keys/{key_id}"): (403, 403, 403, 200, 403, 403),
}

# What a reviewer may do beyond an annotator (auth.has_role ranks reviewer above annotator and
# below engineer): the review stage's routes, which need the reviewer role (403 below it).
REVIEW_ROUTES = {
    ("POST", "/projects/{project_id}/reviews/next"),
    ("POST", "/tasks/{task_id}/review"),
    ("POST", "/tasks/{task_id}/review/heartbeat"),
    ("POST", "/tasks/{task_id}/review/release"),
}

BASELINE_CSV = (
    b"label,strategy,seed,round,labelled_regions,labelled_pixels,labelled_fraction,test_miou\n"
    b"random,random,0,0,10,640,0.1,0.30\nrandom,random,0,1,20,1280,0.2,0.40\n"
)
_seeds = itertools.count(1000)


def routes_of(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route the app answers, included routers flattened, routes
    hidden from the OpenAPI schema included; a mount (no methods) counts as ``("*", path)``."""
    try:  # FastAPI >= 0.12x keeps included routers nested; this flattens them
        from fastapi.routing import iter_route_contexts

        routes: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # older FastAPI: app.routes is already flat
        routes = list(app.routes)
    found = set()
    for route in routes:
        methods = set(route.methods or {"*"})
        if "GET" in methods:
            methods.discard("HEAD")  # Starlette adds HEAD to GET routes
        found |= {(m, route.path) for m in methods}
    return found


@dataclass
class World:
    """A project with everything a route can point at, and a token per caller."""

    stack: Stack
    pid: int
    other_pid: int
    image_id: int
    job_id: int
    model_id: int
    webhook_id: int
    held_task_id: int  # leased to the admin: the task of every non-member cell
    import_coco: bytes
    headers: dict[str, dict[str, str]]
    user_ids: dict[str, int]
    bystander_id: int
    raw_tokens: list[str] = field(default_factory=list)
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def client(self, who: str) -> httpx.Client:
        """One kept-alive client per caller (a new connection per cell costs most of the
        matrix's time)."""
        if who not in self.clients:
            self.clients[who] = self.stack.client()
            self.clients[who].headers.update(self.headers[who])
        return self.clients[who]

    def lease_for(self, who: str) -> tuple[int, list[int]]:
        """A fresh task leased to ``who`` (a member): (task id, its regions)."""
        with self.stack.db.session() as s:  # type: ignore[attr-defined]
            project = s.get(Project, self.pid)
            user = s.get(User, self.user_ids[who])
            task = task_service.lease_next(s, project, user, 600)
            assert task is not None, "the world ran out of queued tasks"
            return task.id, [int(r) for r in task.regions]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[World]:
    from activeseg.core.tables import Role

    with stack.client(stack.admin_token) as admin:
        ann_id, ann = make_user(admin, "annotator")
        rev_id, rev = make_user(admin, "reviewer")
        eng_id, eng = make_user(admin, "engineer")
        o_ann_id, o_ann = make_user(admin, "annotator")
        o_eng_id, o_eng = make_user(admin, "engineer")
        bystander_id, _ = make_user(admin, "annotator")
        revoked_admin_id, revoked = make_user(admin, "admin")
        expired_admin_id, _ = make_user(admin, "admin")
    with stack.db.session() as s:  # type: ignore[attr-defined]
        admin_id = s.scalar(
            select(ApiToken.user_id).where(
                ApiToken.token_hash == auth.hash_token(stack.admin_token)
            )
        )
        expired_user = s.get(User, expired_admin_id)
        assert expired_user is not None and expired_user.role == Role.admin
        _, expired = auth.create_token(s, expired_user, timedelta(seconds=-1))
    with stack.client(revoked) as c:  # an admin revokes their own token over HTTP
        own = c.get("/tokens").json()["data"][0]["id"]
        assert c.delete(f"/tokens/{own}").status_code == 200

    with stack.client(eng) as c:
        # Tiny, fast settings: jobs this test requests may be run by workers of later tests.
        project = grid_project(
            c,
            region_size=8,
            batch_size=40,
            lease_seconds=600,
            model={"method": "single", "steps": 1, "base_channels": 4},
        )
        pid = project["id"]
        for member in (ann_id, rev_id):
            r = c.post(f"/projects/{pid}/members", json={"user_id": member})
            assert r.status_code == 204, r.text
        files = [(f"w{i}.png", image_bytes(32, 32, seed=7000 + i, rgb=False)) for i in range(3)]
        r = upload(c, pid, *files)
        assert r.status_code == 201, r.text
        image_id = r.json()["data"][0]["image"]["id"]
        mask = np.full((32, 32), 255, np.uint8)
        mask[:8, :8] = 1
        r = c.put(f"/images/{image_id}/mask", files={"file": ("m.png", png_bytes(mask))})
        assert r.status_code == 201, r.text
    with stack.client(o_eng) as c:
        other_pid = make_project(c)["id"]
        r = c.post(f"/projects/{other_pid}/members", json={"user_id": o_ann_id})
        assert r.status_code == 204, r.text
    job_id = build_queue_inline(stack, pid)  # 40 random grid tasks, no model yet
    model_id = add_scored_model(
        stack, pid, {image_id: np.zeros((32, 32), np.uint8)}, {image_id: 0.5}
    )
    with stack.db.session() as s:  # type: ignore[attr-defined]
        plot = stack.store.put(png_bytes(np.zeros((4, 4), np.uint8)))  # type: ignore[attr-defined]
        mv = s.get(ModelVersion, model_id)
        mv.report = {"model": {"id": model_id, "version": 1}, "plots": {"reliability": plot}}
        held = task_service.lease_next(s, s.get(Project, pid), s.get(User, admin_id), 600)
        assert held is not None
        held_task_id = held.id
    with stack.client(eng) as c:
        hook = c.post(
            f"/projects/{pid}/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]},
        )
        assert hook.status_code == 201, hook.text
        r = c.post(f"/projects/{pid}/baseline", files={"file": ("curve.csv", BASELINE_CSV)})
        assert r.status_code == 202, r.text
        coco = c.get(f"/projects/{pid}/export", params={"format": "coco"})
        assert coco.status_code == 200

    headers = {
        "anonymous": {},
        "malformed": {"Authorization": "Basic !!not-base64!!"},
        "unknown": _bearer("as_" + "x" * 43),
        "expired": _bearer(expired),
        "revoked": _bearer(revoked),
        "annotator": _bearer(ann),
        "reviewer": _bearer(rev),
        "engineer": _bearer(eng),
        "admin": _bearer(stack.admin_token),
        "other_annotator": _bearer(o_ann),
        "other_engineer": _bearer(o_eng),
    }
    w = World(
        stack=stack,
        pid=pid,
        other_pid=other_pid,
        image_id=image_id,
        job_id=job_id,
        model_id=model_id,
        webhook_id=hook.json()["id"],
        held_task_id=held_task_id,
        import_coco=coco.content,
        headers=headers,
        user_ids={
            "annotator": ann_id,
            "reviewer": rev_id,
            "engineer": eng_id,
            "admin": admin_id,
            "revoked": revoked_admin_id,
            "expired": expired_admin_id,
        },
        bystander_id=bystander_id,
        raw_tokens=[ann, rev, eng, o_ann, o_eng, revoked, expired, stack.admin_token],
    )
    yield w
    for c in w.clients.values():
        c.close()
    # Jobs requested here would otherwise wait in the broker for the workers of later tests.
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.execute(
            update(Job)
            .where(Job.project_id == pid, Job.state.in_(ACTIVE_STATES))
            .values(state="failed", error="left over by tests/security")
        )


# --- how each route is called ---------------------------------------------------------------


@dataclass
class Call:
    params: dict[str, Any] = field(default_factory=dict)  # path parameters over the world's
    kwargs: dict[str, Any] = field(default_factory=dict)  # for httpx.Client.request


def _throwaway_token(w: World, who: str) -> Call:
    with w.stack.db.session() as s:  # type: ignore[attr-defined]
        token, _ = auth.create_token(s, s.get(User, w.user_ids["engineer"]))
        return Call({"token_id": token.id})


def _throwaway_image(w: World, who: str) -> Call:
    r = upload(w.client("admin"), w.pid, ("bin.png", image_bytes(8, 8, seed=next(_seeds))))
    assert r.status_code == 201, r.text
    return Call({"image_id": r.json()["data"][0]["image"]["id"]})


def _throwaway_webhook(w: World, who: str) -> Call:
    r = w.client("admin").post(
        f"/projects/{w.pid}/webhooks",
        json={"url": "http://127.0.0.1:9/bin", "events": ["model.trained"]},
    )
    assert r.status_code == 201, r.text
    return Call({"webhook_id": r.json()["id"]})


def _throwaway_link_key(w: World, who: str) -> Call:
    from activeseg.core.services import links

    with w.stack.db.session() as s:  # type: ignore[attr-defined]
        return Call({"key_id": links.rotate(s).id})


def _failed_job(w: World, who: str) -> Call:
    with w.stack.db.session() as s:  # type: ignore[attr-defined]
        job = Job(
            project_id=w.pid,
            kind="verify_storage",
            params={"n": next(_seeds)},
            state="failed",
            error="made to fail by the test",
        )
        s.add(job)
        s.flush()
        return Call({"job_id": job.id})


def _own_task(body: Callable[[list[int]], dict[str, Any]] | None = None) -> Any:
    """A task freshly leased to the caller when a member; for everyone else the task held by
    the admin (which the admin could act on: a 401 there is the token's doing)."""

    def make(w: World, who: str) -> Call:
        if who in MAY_LEASE:
            task_id, regions = w.lease_for(who)
        else:
            task_id, regions = w.held_task_id, [0]
        return Call({"task_id": task_id}, {"json": body(regions)} if body else {})

    return make


def _mask(w: World, who: str) -> Call:
    mask = np.full((32, 32), 255, np.uint8)
    mask[8:16, :] = 2
    return Call(kwargs={"files": {"file": ("m.png", png_bytes(mask))}})


def _throwaway_backend_key(w: World, who: str) -> Call:
    from activeseg.core.services import backend_keys

    with w.stack.db.session() as s:  # type: ignore[attr-defined]
        project = s.get(Project, w.pid)
        key, _ = backend_keys.create(s, project, s.get(User, w.user_ids["engineer"]))
        return Call({"key_id": key.id})


def _json(body: dict[str, Any] | Callable[[World], dict[str, Any]]) -> Any:
    return lambda w, who: Call(kwargs={"json": body(w) if callable(body) else body})


CALLS: dict[tuple[str, str], Callable[[World, str], Call]] = {
    ("POST", "/users"): _json(lambda w: {"name": f"u{next(_seeds)}", "role": "annotator"}),
    ("POST", "/tokens"): _json({}),
    ("DELETE", "/tokens/{token_id}"): _throwaway_token,
    ("POST", "/projects"): _json(
        lambda w: {
            "name": f"authz-{next(_seeds)}",
            "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}],
        }
    ),
    ("PATCH", "/projects/{project_id}"): _json({"description": "checked"}),
    ("POST", "/projects/{project_id}/members"): _json(lambda w: {"user_id": w.bystander_id}),
    ("POST", "/projects/{project_id}/images"): lambda w, who: Call(
        kwargs={"files": [("files", ("n.png", image_bytes(8, 8, seed=next(_seeds))))]}
    ),
    ("PATCH", "/images/{image_id}"): _json({"split": "pool"}),
    ("DELETE", "/images/{image_id}"): _throwaway_image,
    ("PUT", "/images/{image_id}/mask"): _mask,
    ("POST", "/projects/{project_id}/verify"): _json({}),
    ("POST", "/jobs/{job_id}/retry"): _failed_job,
    ("POST", "/projects/{project_id}/retrain"): _json({}),
    ("POST", "/projects/{project_id}/score"): _json({}),
    ("POST", "/projects/{project_id}/rounds"): _json({}),
    ("POST", "/tasks/{task_id}/heartbeat"): _own_task(),
    ("POST", "/tasks/{task_id}/release"): _own_task(),
    ("POST", "/tasks/{task_id}/skip"): _own_task(lambda regions: {"reason": "unclear"}),
    ("POST", "/tasks/{task_id}/submit"): _own_task(
        lambda regions: {"classes": {str(r): 1 for r in regions}}
    ),
    ("GET", "/tasks/{task_id}"): lambda w, who: Call({"task_id": w.held_task_id}),
    ("POST", "/tasks/{task_id}/review"): lambda w, who: Call(
        {"task_id": w.held_task_id}, {"json": {"decision": "accept"}}
    ),
    ("POST", "/tasks/{task_id}/review/heartbeat"): lambda w, who: Call({"task_id": w.held_task_id}),
    ("POST", "/tasks/{task_id}/review/release"): lambda w, who: Call({"task_id": w.held_task_id}),
    ("POST", "/models/{model_id}/report"): _json({}),
    ("POST", "/projects/{project_id}/baseline"): lambda w, who: Call(
        kwargs={"files": {"file": ("curve.csv", BASELINE_CSV)}}
    ),
    ("POST", "/projects/{project_id}/import"): lambda w, who: Call(
        kwargs={"params": {"format": "coco"}, "files": {"file": ("l.json", w.import_coco)}}
    ),
    ("POST", "/projects/{project_id}/webhooks"): _json(
        {"url": "http://127.0.0.1:9/hook", "events": ["queue.refilled"]}
    ),
    ("DELETE", "/projects/{project_id}/webhooks/{webhook_id}"): _throwaway_webhook,
    ("POST", "/projects/{project_id}/webhooks/{webhook_id}/ping"): _json({}),
    ("POST", "/ls/{project_id}/setup"): _json({}),
    ("POST", "/ls/{project_id}/predict"): _json({"tasks": []}),
    ("POST", "/ls/{project_id}/webhook"): _json({"action": "START_TRAINING"}),
    ("POST", "/links"): _json(lambda w: {"path": f"/images/{w.image_id}/file"}),
    ("DELETE", "/admin/link-keys/{key_id}"): _throwaway_link_key,
    ("DELETE", "/projects/{project_id}/label-studio/keys/{key_id}"): _throwaway_backend_key,
}

REFUSED_DETAIL = {
    "anonymous": "missing API token",
    "malformed": "missing API token",  # a non-Bearer header is no token at all...
    "unknown": "invalid API token",
    "expired": "this API token has expired",
    "revoked": "this API token has been revoked",
}
LS_MALFORMED = "malformed HTTP Basic credentials"  # ...except where Basic auth is accepted


def expected(key: tuple[str, str], who: str) -> int:
    return 401 if who in REFUSED else MATRIX[key][ALLOWED.index(who)]


def cells() -> list[tuple[tuple[str, str], str]]:
    """Every (route, caller); refused and outside callers first, destructive routes last."""
    order = REFUSED + ("other_annotator", "other_engineer", "annotator", "reviewer")
    order += ("engineer", "admin")
    keys = sorted(MATRIX, key=lambda k: k[0] == "DELETE")
    return [(key, who) for key in keys for who in order]


def run_cell(w: World, key: tuple[str, str], who: str) -> str | None:
    """Call one cell; None when it answers as the table says, else what went wrong."""
    method, template = key
    call = CALLS.get(key, lambda w, who: Call())(w, who)
    params = {
        "project_id": w.pid,
        "image_id": w.image_id,
        "job_id": w.job_id,
        "model_id": w.model_id,
        "webhook_id": w.webhook_id,
        "name": "reliability",
        **call.params,
    }
    r = w.client(who).request(method, template.format(**params), **call.kwargs)
    want = expected(key, who)
    if r.status_code != want:
        return f"{method} {template} as {who}: {r.status_code} (want {want}) {r.text[:160]}"
    if want >= 400:
        detail = r.json().get("detail")
        if not isinstance(detail, str) or not detail:
            return f"{method} {template} as {who}: no clear detail: {r.text[:160]}"
        if who in REFUSED:
            ls_basic = who == "malformed" and template.startswith("/ls/")
            need = LS_MALFORMED if ls_basic else REFUSED_DETAIL[who]
            if not detail.startswith(need) or r.headers.get("www-authenticate") != "Bearer":
                return f"{method} {template} as {who}: 401 said {detail!r}, want {need!r}"
    return None


def test_every_route_has_a_row_or_a_reasoned_exemption(stack: Stack) -> None:
    from activeseg.api.app import create_app

    app = create_app(stack.settings, dispatcher=lambda job_id: True)  # type: ignore[arg-type]
    try:
        served = routes_of(app)
    finally:
        app.state.db.dispose()
    guarded = {(m, p) for m, p in served if p not in EXEMPT and not p.startswith(KEYED)}
    keyed = {
        (m, "/ls/{project_id}" + p.removeprefix(KEYED)) for m, p in served if p.startswith(KEYED)
    }
    assert keyed and keyed == {(m, p) for m, p in guarded if p.startswith("/ls/")}
    assert guarded - set(MATRIX) == set(), "routes without a row in MATRIX: decide who may call"
    assert set(MATRIX) - guarded == set(), "rows in MATRIX for routes the app does not serve"
    assert set(CALLS) - set(MATRIX) == set(), "CALLS names a route that has no row"
    short = [key for key, row in MATRIX.items() if len(row) != len(ALLOWED)]
    assert short == [], f"rows without one status per caller {ALLOWED}"


def test_a_reviewer_is_an_annotator_who_may_review() -> None:
    """The reviewer column is the annotator's, except on the review routes: there the annotator
    is refused for the role (403) and the reviewer, a member, gets what the engineer gets."""
    ann, rev, eng = (ALLOWED.index(who) for who in ("annotator", "reviewer", "engineer"))
    differ = {key for key, row in MATRIX.items() if row[rev] != row[ann]}
    assert differ == REVIEW_ROUTES
    for key in REVIEW_ROUTES:
        assert MATRIX[key][ann] == 403 and MATRIX[key][rev] == MATRIX[key][eng] != 403, key


def test_exempt_routes_answer_without_a_token(stack: Stack) -> None:
    paths = {
        "/static/{name}": "/static/annotate.js",
        "/docs-assets": "/docs-assets/swagger-ui.css",
    }
    from activeseg.api.app import create_app

    app = create_app(stack.settings, dispatcher=lambda job_id: True)  # type: ignore[arg-type]
    try:
        served = {p for _, p in routes_of(app)}
    finally:
        app.state.db.dispose()
    with stack.client() as c:
        for path in sorted(set(EXEMPT) & served):
            r = c.get(paths.get(path, path), follow_redirects=True)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])


def test_keyed_routes_need_their_projects_key(world: World) -> None:
    """Under /ls/{id}/k/{key} the key decides, whatever else is sent: the project's key acts as
    the engineer who made it (the engineer column of the matrix), with no header; a key of
    another project, a wrong or revoked key gets 401 even with an admin's token."""
    from activeseg.core.services import backend_keys

    with world.stack.db.session() as s:  # type: ignore[attr-defined]
        engineer = s.get(User, world.user_ids["engineer"])
        _, key = backend_keys.create(s, s.get(Project, world.pid), engineer)
        other = s.get(Project, world.other_pid)
        _, other_key = backend_keys.create(s, other, s.get(User, world.user_ids["admin"]))
        revoked, revoked_key = backend_keys.create(s, s.get(Project, world.pid), engineer)
        revoked.revoked_at = revoked.created_at
    wrong = []
    rows = [(key, row) for key, row in MATRIX.items() if key[1].startswith("/ls/{project_id}")]
    for (method, template), row in rows:
        suffix = template.removeprefix("/ls/{project_id}")
        call = CALLS.get((method, template), lambda w, who: Call())(world, "engineer")
        cases = [(key, None, row[ALLOWED.index("engineer")])] + [
            (bad, world.headers["admin"], 401) for bad in (other_key, revoked_key, key[:-1])
        ]
        for raw, headers, want in cases:
            with world.stack.client() as c:
                path = f"/ls/{world.pid}/k/{raw}{suffix}"
                r = c.request(method, path, headers=headers, **call.kwargs)
            if r.status_code != want or raw in r.text:
                wrong.append(f"{method} {suffix} key {raw[:8]}: {r.status_code} (want {want})")
    assert wrong == []


def test_authorisation_matrix(world: World) -> None:
    wrong = [m for key, who in cells() if (m := run_cell(world, key, who)) is not None]
    assert wrong == [], f"{len(wrong)} of {len(cells())} cells differ:\n" + "\n".join(wrong)


def test_tokens_are_stored_only_as_hashes(world: World) -> None:
    """No column of any table holds a raw token; api_tokens holds its sha256 (and a 10
    character display prefix, too short to use)."""
    stack = world.stack
    with stack.db.session() as s:  # type: ignore[attr-defined]
        hashes = set(s.scalars(select(ApiToken.token_hash)))
        for table in Base.metadata.sorted_tables:
            for row in s.execute(table.select()):
                text = " ".join(str(v) for v in row)
                leaked = [t[:12] for t in world.raw_tokens if t in text]
                assert leaked == [], f"raw token(s) {leaked}... stored in table {table.name}"
        prefixes = set(s.scalars(select(ApiToken.prefix)))
    for raw in world.raw_tokens:
        assert auth.hash_token(raw) in hashes
        assert raw[:10] in prefixes and len(raw) > 40


def test_outsiders_are_working_members_of_their_own_project(world: World) -> None:
    """The 404s of the other-project columns come from membership, not from a broken caller:
    the same tokens work on their own project."""
    for who in ("other_annotator", "other_engineer"):
        r = world.client(who).get(f"/projects/{world.other_pid}")
        assert (r.status_code, r.json()["id"]) == (200, world.other_pid)
        listed = {p["id"] for p in world.client(who).get("/projects").json()["data"]}
        assert world.other_pid in listed and world.pid not in listed


def test_refused_tokens_say_why_and_stay_refused(world: World) -> None:
    r = world.client("revoked").get("/users/me")
    assert (r.status_code, r.json()) == (401, {"detail": "this API token has been revoked"})
    r = world.client("expired").get("/users/me")
    assert (r.status_code, r.json()) == (401, {"detail": "this API token has expired"})
    # Label Studio's Basic auth carries the token as the password: refused the same way.
    import base64

    token = world.headers["revoked"]["Authorization"].split(" ", 1)[1]
    basic = base64.b64encode(f"ls:{token}".encode()).decode()
    with world.stack.client() as c:
        r = c.get(f"/ls/{world.pid}/health", headers={"Authorization": f"Basic {basic}"})
    assert (r.status_code, r.json()) == (401, {"detail": "this API token has been revoked"})
