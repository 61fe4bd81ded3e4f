"""Overlap 2 with 64 annotators at once over real HTTP (issue 16, "Done means"): every region
is answered by exactly 2 different annotators, nobody answers one twice, no task is held by
two annotators at once, and each region's consensus is its label.

Annotators answer with a class that depends only on the task, so the two answers agree and
every task ends ``submitted`` with one consensus revision. An annotator told 204 (nothing open
to *them* now: the rest is leased, or answered by them) asks again while tasks remain open.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from activeseg.core.services.labels import current_mask
from activeseg.core.tables import Image, LabelRevision, Task, TaskAnswer
from activeseg.uncertainty.regions import grid_regions
from tests.conftest import Stack
from tests.load.server import server_process
from tests.load.test_concurrent_leases import N_CLASSES, SIDE, TILE, Load, _prepare

OVERLAP = 2


@dataclass
class Record:
    leases: list[tuple[int, int]] = field(default_factory=list)  # (task id, user id)
    held: dict[int, int] = field(default_factory=dict)
    double: list[tuple[int, int, int]] = field(default_factory=list)
    answered: Counter[tuple[int, int]] = field(default_factory=Counter)  # (task, user)
    task_info: dict[int, tuple[int, int]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def _class_of(task_id: int) -> int:
    return (task_id * 7) % N_CLASSES


async def _annotator(base_url: str, load: Load, uid: int, rec: Record, deadline: float) -> None:
    headers = {"Authorization": f"Bearer {load.tokens[uid]}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as c:
        while time.monotonic() < deadline:
            r = await c.post(f"/projects/{load.pid}/tasks/next")
            if r.status_code == 204:
                counts = (await c.get(f"/projects/{load.pid}/queue")).json()
                if counts.get("queued", 0) + counts.get("leased", 0) == 0:
                    return
                await asyncio.sleep(0.05)  # others hold the rest: ask again shortly
                continue
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
            body = {"classes": {str(region): _class_of(tid)}}
            # The hold ends as the answer is sent: the server may hand the task to the next
            # annotator as soon as it has committed, before this coroutine reads the answer
            # (a real double hand-out would make this submit fail with 409).
            del rec.held[tid]
            r = await c.post(f"/tasks/{tid}/submit", json=body)
            rec.statuses[r.status_code] += 1
            if r.status_code != 201:
                rec.errors.append(f"submit {tid} by {uid}: {r.status_code} {r.text[:300]}")
                return
            rec.answered[(tid, uid)] += 1
    rec.errors.append(f"annotator {uid} still busy at the deadline")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stack", "n_images"), [("postgresql", 63), ("sqlite", 63)], indirect=["stack"]
)
def test_every_region_is_answered_by_exactly_two_annotators(
    stack: Stack, admin: httpx.Client, n_images: int
) -> None:
    load = _prepare(stack, admin, n_images, 64, overlap=OVERLAP)
    assert load.n_tasks * OVERLAP >= 2000
    rec = Record()
    with server_process(stack.env, workers=2) as url:
        start = time.perf_counter()
        deadline = time.monotonic() + 240

        async def run() -> None:
            await asyncio.gather(
                *(_annotator(url, load, uid, rec, deadline) for uid in load.tokens)
            )

        asyncio.run(run())
        elapsed = time.perf_counter() - start
    print(
        f"\n[{stack.backend}] overlap {OVERLAP}, 64 annotators: {len(rec.leases)} leases + "
        f"submits in {elapsed:.1f} s = {len(rec.leases) / elapsed:.0f} leases/s"
    )
    assert not rec.errors, rec.errors[:5]
    assert not rec.double, f"tasks held by two annotators at once: {rec.double[:5]}"
    assert len(rec.leases) == load.n_tasks * OVERLAP
    assert max(rec.answered.values()) == 1  # nobody answered a region twice
    per_task = Counter(tid for tid, _ in rec.answered)
    assert set(per_task.values()) == {OVERLAP} and len(per_task) == load.n_tasks
    assert len({uid for _, uid in rec.leases}) > 32  # the load was really shared

    with stack.db.session() as s:  # type: ignore[attr-defined]
        rows = s.execute(
            select(TaskAnswer.task_id, TaskAnswer.user_id)
            .join(Task, Task.id == TaskAnswer.task_id)
            .where(Task.project_id == load.pid)
        ).all()
        assert Counter((r.task_id, r.user_id) for r in rows) == rec.answered
        states = Counter(s.scalars(select(Task.state).where(Task.project_id == load.pid)).all())
        assert states == Counter({"submitted": load.n_tasks})
        n_consensus = s.scalar(
            select(func.count())
            .select_from(LabelRevision)
            .join(Image, Image.id == LabelRevision.image_id)
            .where(Image.project_id == load.pid, LabelRevision.source == "consensus")
        )
        assert n_consensus == load.n_tasks
        grid = grid_regions(SIDE, SIDE, TILE).labels
        expected = {i: np.full((SIDE, SIDE), 255, np.uint8) for i in load.images}
        for tid, (image_id, region) in rec.task_info.items():
            expected[image_id][grid == region] = _class_of(tid)
        for image in s.scalars(select(Image).where(Image.project_id == load.pid)):
            mask = current_mask(s, stack.store, image)  # type: ignore[arg-type]
            assert np.array_equal(mask, expected[image.id]), image.id
