"""The orphan-blob sweep deletes exactly the blobs no row references once they are past the
grace period, keeps every kind of reference, and is requested by the maintenance task."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select, update

from activeseg.core.services.blobs import (
    NOT_BLOB_KEY_COLUMNS,
    sweep_orphan_blobs,
    unclassified_key_columns,
)
from activeseg.core.storage import LocalBlobStore
from activeseg.core.tables import (
    Image,
    ImageScore,
    Job,
    JobState,
    LabelRevision,
    ModelVersion,
    RegionSet,
)
from activeseg.jobs.registry import inline_dispatcher
from activeseg.worker.app import make_celery
from activeseg.worker.dispatch import ORPHAN_SWEEP_KIND, run_maintenance
from tests.conftest import Stack
from tests.utils import make_project


def test_every_key_column_is_classified() -> None:
    # A new *_key column must be added to BLOB_KEY_COLUMNS (or NOT_BLOB_KEY_COLUMNS) in
    # activeseg/core/services/blobs.py; until then the sweep keeps whatever it names.
    assert unclassified_key_columns() == []
    assert "tasks.region_key" in NOT_BLOB_KEY_COLUMNS


def test_sweep_keeps_every_reference_and_removes_old_orphans(
    stack: Stack, admin: httpx.Client, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")  # this test's own store: exact answers
    blob = {name: store.put(f"{name}-{os.urandom(8).hex()}".encode()) for name in (
        "image", "label", "regions", "member0", "member1", "plot", "heatmap", "prediction",
        "baseline", "result", "orphan0", "orphan1",
    )}  # fmt: skip
    pid = make_project(admin)["id"]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        image = Image(
            project_id=pid, sha256=blob["image"], blob_key=blob["image"], filename="x.png",
            format="png", width=4, height=4, channels=3, size_bytes=10,
        )  # fmt: skip
        s.add(image)
        s.flush()
        mv = ModelVersion(
            project_id=pid,
            version=1,
            config={},
            member_keys=[blob["member0"], blob["member1"]],
            report={"plots": {"reliability": blob["plot"]}},
        )
        s.add(mv)
        s.flush()
        s.add_all(
            [
                LabelRevision(
                    image_id=image.id, revision=1, blob_key=blob["label"], labelled_pixels=1,
                    source="upload",
                ),
                RegionSet(image_id=image.id, kind="grid", size=2, n_regions=4,
                          blob_key=blob["regions"]),
                ImageScore(
                    model_version_id=mv.id, image_id=image.id, measure="entropy", mean=0.5,
                    heatmap_key=blob["heatmap"], prediction_key=blob["prediction"],
                ),
                Job(project_id=pid, kind="evaluate", params={"baseline_key": blob["baseline"]},
                    result={"plots": [blob["result"]]}, state=JobState.succeeded.value),
            ]
        )  # fmt: skip
    young = sweep_orphan_blobs(stack.db, store, grace_s=3600)  # type: ignore[arg-type]
    assert (young.old, young.removed) == (0, [])  # nothing is past the grace period yet
    later = datetime.now(UTC) + timedelta(hours=2)
    result = sweep_orphan_blobs(stack.db, store, grace_s=3600, now=later)  # type: ignore[arg-type]
    orphans = sorted([blob["orphan0"], blob["orphan1"]])
    assert result.summary() == {"old": 12, "referenced": 10, "removed": 2, "skipped": 0}
    assert result.removed == orphans
    assert store.keys() == sorted(k for n, k in blob.items() if not n.startswith("orphan"))


def test_maintenance_requests_a_sweep_job_once_per_period(stack: Stack) -> None:
    db = stack.db
    with db.session() as s:  # type: ignore[attr-defined]
        # Sweeps of earlier tests (a worker's beat) count as done long ago.
        s.execute(
            update(Job)
            .where(Job.kind == ORPHAN_SWEEP_KIND)
            .values(state=JobState.succeeded.value, created_at=datetime(2000, 1, 1, tzinfo=UTC))
        )
    celery = make_celery(stack.settings)  # type: ignore[arg-type]
    first = run_maintenance(db, celery, 30.0, orphan_sweep_every_s=3600)  # type: ignore[arg-type]
    again = run_maintenance(db, celery, 30.0, orphan_sweep_every_s=3600)  # type: ignore[arg-type]
    assert (first["orphan_sweeps_requested"], again["orphan_sweeps_requested"]) == (1, 0)
    with db.session() as s:  # type: ignore[attr-defined]
        job = s.scalars(
            select(Job).where(Job.kind == ORPHAN_SWEEP_KIND).order_by(Job.id.desc())
        ).first()
        assert job is not None and job.project_id is None
        assert job.state == JobState.queued.value  # handed to the real broker
        job_id = job.id
    # Run it here (the message stays in this session's queue; a worker would find it done).
    inline_dispatcher(db, stack.store, stack.settings)(job_id)  # type: ignore[arg-type]
    with db.session() as s:  # type: ignore[attr-defined]
        done = s.get(Job, job_id)
        assert done is not None and done.state == JobState.succeeded.value
        grace = stack.settings.orphan_blob_grace_s  # type: ignore[attr-defined]
        # This session's blobs are all younger than the default grace period of a day.
        result = dict(done.result or {})
        # The sweep prunes unneeded scores first (what other tests left: counts vary).
        assert set(result.pop("pruned_scores")) == {"versions", "rows", "blobs"}
        assert result == {
            "old": 0, "referenced": 0, "removed": 0, "skipped": 0, "grace_s": grace
        }  # fmt: skip
