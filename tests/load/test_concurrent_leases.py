"""Many annotators pulling and submitting at once over real HTTP (issue 6, "Done means").

64 annotators (PostgreSQL) or 8 (SQLite, the embedded mode) lease and submit until the queue is
empty, against a uvicorn server in its own process. Invariants checked:

- no task is ever held by two annotators at once, and every task is leased exactly once (no
  lease expires during the test);
- every submission is stored (201), as exactly one ``task`` label revision, and each task ends
  ``submitted`` by the annotator who leased it;
- the final mask of each image has exactly the submitted regions labelled, with the submitted
  classes: two annotators submitting regions of the *same* image at once lose nothing.

Priorities are random: with 64 tasks in flight over 130 images of 16 regions, a dozen pairs of
annotators hold regions of the same image at any moment, so their submissions race each other.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, insert, select

from activeseg.core.services import auth
from activeseg.core.services.labels import current_mask
from activeseg.core.tables import Image, LabelRevision, Task
from activeseg.uncertainty.regions import grid_regions
from tests.conftest import Stack
from tests.load.server import server_process
from tests.utils import image_bytes, make_project, upload

SIDE, TILE = 64, 16  # 16 grid regions per image
N_CLASSES = 3


@dataclass
class Load:
    pid: int
    tokens: dict[int, str]  # user id -> token
    images: list[int]
    n_tasks: int


@dataclass
class Record:
    leases: list[tuple[int, int]] = field(default_factory=list)  # (task id, user id)
    task_info: dict[int, tuple[int, int]] = field(default_factory=dict)  # task -> (image, region)
    submitted: dict[int, int] = field(default_factory=dict)  # task id -> class sent
    statuses: Counter[int] = field(default_factory=Counter)
    held: dict[int, int] = field(default_factory=dict)  # task id -> user holding it now
    double: list[tuple[int, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _prepare(
    stack: Stack, admin: httpx.Client, n_images: int, n_users: int, **settings: Any
) -> Load:
    project = make_project(
        admin,
        n_classes=N_CLASSES,
        region_kind="grid",
        region_size=TILE,
        per_image_cap=None,
        lease_seconds=3600,  # nothing lapses during the test
        **settings,
    )
    pid = project["id"]
    images: list[int] = []
    per_upload = int(stack.env["ACTIVESEG_MAX_IMAGES_PER_UPLOAD"])
    for start in range(0, n_images, per_upload):
        files = [
            (f"{i}.png", image_bytes(SIDE, SIDE, seed=1000 + i))
            for i in range(start, min(n_images, start + per_upload))
        ]
        r = upload(admin, pid, *files)
        assert r.status_code == 201, r.text
        images += [d["image"]["id"] for d in r.json()["data"]]
    assert len(set(images)) == n_images
    rng = np.random.default_rng(6)
    n_regions = (SIDE // TILE) ** 2
    rows: list[dict[str, Any]] = [
        {
            "project_id": pid,
            "image_id": image_id,
            "regions": [r],
            "region_key": str(r),
            "region_kind": "grid",
            "region_size": TILE,
            "measure": "entropy",
            "priority": float(rng.random()),
            "state": "queued",
            "lease_count": 0,
        }
        for image_id in images
        for r in range(n_regions)
    ]
    tokens: dict[int, str] = {}
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.execute(insert(Task), rows)
        project_row = auth.get_project_for(s, auth.create_user(s, f"lead-{pid}", "admin"), pid)
        for k in range(n_users):
            user = auth.create_user(s, f"load-{pid}-{k}", "annotator")
            auth.add_member(s, project_row, user.id)
            tokens[user.id] = auth.create_token(s, user)[1]
    return Load(pid, tokens, images, len(rows))


async def _annotator(base_url: str, load: Load, uid: int, rec: Record) -> None:
    headers = {"Authorization": f"Bearer {load.tokens[uid]}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as c:
        while True:
            r = await c.post(f"/projects/{load.pid}/tasks/next")
            if r.status_code == 204:
                return
            if r.status_code != 200:
                rec.errors.append(f"lease by {uid}: {r.status_code} {r.text[:300]}")
                return
            task = r.json()["task"]
            tid, region = task["id"], task["regions"][0]
            rec.leases.append((tid, uid))
            if tid in rec.held:
                rec.double.append((tid, rec.held[tid], uid))
            rec.held[tid] = uid
            rec.task_info[tid] = (task["image_id"], region)
            cls = (tid * 7 + region) % N_CLASSES
            body = {"classes": {str(region): cls}, "idempotency_key": uuid.uuid4().hex}
            r = await c.post(f"/tasks/{tid}/submit", json=body)
            rec.statuses[r.status_code] += 1
            if r.status_code != 201:
                rec.errors.append(f"submit {tid} by {uid}: {r.status_code} {r.text[:300]}")
                return
            del rec.held[tid]  # submitted: no longer held (the server agreed, above)
            rec.submitted[tid] = cls


async def _run(base_url: str, load: Load, rec: Record) -> None:
    await asyncio.gather(*(_annotator(base_url, load, uid, rec) for uid in load.tokens))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stack", "n_users", "n_images", "workers"),
    [("postgresql", 64, 125, 2), ("sqlite", 8, 19, 2)],
    indirect=["stack"],
)
def test_concurrent_annotators_never_share_a_task_nor_lose_a_label(
    stack: Stack, admin: httpx.Client, n_users: int, n_images: int, workers: int
) -> None:
    t0 = time.perf_counter()
    load = _prepare(stack, admin, n_images, n_users)
    assert load.n_tasks >= (2000 if stack.backend == "postgresql" else 300)
    rec = Record()
    t1 = time.perf_counter()
    with server_process(stack.env, workers=workers) as url:
        start = time.perf_counter()
        asyncio.run(_run(url, load, rec))
        elapsed = time.perf_counter() - start
    print(
        f"\n[{stack.backend}] {n_users} annotators, {workers} server workers: "
        f"{len(rec.leases)} leases + {sum(rec.statuses.values())} submits in {elapsed:.1f} s = "
        f"{len(rec.leases) / elapsed:.0f} leases/s ({2 * len(rec.leases) / elapsed:.0f} req/s); "
        f"set-up {t1 - t0:.1f} s, server start {start - t1:.1f} s"
    )

    # Over HTTP: nobody got a task someone else held, every task leased once, all stored.
    assert not rec.errors, rec.errors[:5]
    assert not rec.double, f"tasks held by two annotators at once: {rec.double[:5]}"
    per_task = Counter(tid for tid, _ in rec.leases)
    assert per_task.most_common(1)[0][1] == 1, per_task.most_common(3)
    assert len(per_task) == load.n_tasks
    assert rec.statuses == Counter({201: load.n_tasks})
    assert len({uid for _, uid in rec.leases}) > n_users // 2  # the load was really shared

    # In the database: one revision per submission, each task submitted by its leaser.
    leaser = dict(rec.leases)
    with stack.db.session() as s:  # type: ignore[attr-defined]
        tasks = s.execute(
            select(Task.id, Task.state, Task.leased_by, Task.submitted_by, Task.lease_count).where(
                Task.project_id == load.pid
            )
        ).all()
        assert {t.id for t in tasks} == set(leaser)
        for t in tasks:
            assert (t.state, t.leased_by, t.submitted_by, t.lease_count) == (
                "submitted",
                leaser[t.id],
                leaser[t.id],
                1,
            ), t
        n_revisions = s.scalar(
            select(func.count())
            .select_from(LabelRevision)
            .join(Image, Image.id == LabelRevision.image_id)
            .where(Image.project_id == load.pid, LabelRevision.source == "task")
        )
        assert n_revisions == len(rec.submitted) == load.n_tasks

        # The final mask of every image holds every submitted region: no lost update.
        grid = grid_regions(SIDE, SIDE, TILE).labels
        expected: dict[int, np.ndarray] = {
            i: np.full((SIDE, SIDE), 255, np.uint8) for i in load.images
        }
        for tid, cls in rec.submitted.items():
            image_id, region = rec.task_info[tid]
            expected[image_id][grid == region] = cls
        lost = []
        for image in s.scalars(select(Image).where(Image.project_id == load.pid)):
            assert image.current_revision == (SIDE // TILE) ** 2
            mask = current_mask(s, stack.store, image)  # type: ignore[arg-type]
            if not np.array_equal(mask, expected[image.id]):
                lost.append((image.id, int((mask != expected[image.id]).sum())))
        assert not lost, f"images whose mask lost submitted regions (id, pixels): {lost[:10]}"
