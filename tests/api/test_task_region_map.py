"""A task written with its round names its region map's blob, so the lease and the submit read
the map without looking up its row; a task without the name (queued before migration 0008)
looks it up and is served the same."""

from __future__ import annotations

from sqlalchemy import select, update

from activeseg.core.tables import RegionSet, Task
from tests.conftest import Stack
from tests.utils import (
    build_queue_inline,
    grid_project,
    image_bytes,
    make_user,
    sql_statements,
    upload,
)

SHOWN = ("image_width", "image_height", "bbox", "crop", "region_mask_png", "proposed_classes")


def test_lease_and_submit_read_the_named_map_without_a_query(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = grid_project(admin, region_size=16, batch_size=4)["id"]
    upload(admin, pid, ("a.png", image_bytes(32, 48, seed=1)), ("b.png", image_bytes(32, 48, 2)))
    build_queue_inline(stack, pid)
    with stack.db.session() as s:  # type: ignore[attr-defined]
        keys = dict(s.execute(select(RegionSet.image_id, RegionSet.blob_key)).all())
        tasks = s.scalars(select(Task).where(Task.project_id == pid)).all()
        assert len(tasks) == 4
        assert {t.region_map_key for t in tasks} <= set(keys.values())
        assert all(t.region_map_key == keys[t.image_id] for t in tasks)
    uid, token = make_user(admin, "annotator")
    assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204

    with stack.client(token) as ann:
        with sql_statements(stack) as sql:
            named = ann.post(f"/projects/{pid}/tasks/next").json()
        assert not [q for q in sql if "region_sets" in q]
        # 32 x 48 images in 16-px tiles: the size comes from the map's shape.
        assert (named["image_width"], named["image_height"]) == (48, 32)
        task_id = named["task"]["id"]
        y0, x0, y1, x1 = named["bbox"]
        assert (y1 - y0, x1 - x0) == (16, 16)

        assert ann.post(f"/tasks/{task_id}/release").status_code == 200
        with stack.db.session() as s:  # type: ignore[attr-defined]
            s.execute(update(Task).where(Task.id == task_id).values(region_map_key=None))
        with sql_statements(stack) as sql:
            looked_up = ann.post(f"/projects/{pid}/tasks/next").json()
        assert looked_up["task"]["id"] == task_id  # released: first in the queue again
        assert [q for q in sql if "region_sets" in q]
        assert {k: looked_up[k] for k in SHOWN} == {k: named[k] for k in SHOWN}

        second = ann.post(f"/projects/{pid}/tasks/next").json()  # the next one: map named
        assert second["task"]["id"] != task_id
        region = second["task"]["regions"][0]
        with sql_statements(stack) as sql:
            done = ann.post(f"/tasks/{second['task']['id']}/submit", json={"classes": {region: 1}})
        assert done.status_code == 201, done.text
        assert not [q for q in sql if "region_sets" in q]
        assert done.json()["revision"]["labelled_pixels"] == 16 * 16
