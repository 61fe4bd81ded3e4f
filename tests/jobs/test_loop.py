"""The active-learning loop through the plain job functions (no broker): bootstrap a queue,
label from ground truth, retrain, re-score, queue again from the new scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from activeseg.core.project_config import ModelSettings, ProjectSettings
from activeseg.core.services import tasks
from activeseg.core.services.jobs import request_job
from activeseg.core.services.regions import region_set
from activeseg.core.services.scores import ScoredImage
from activeseg.core.tables import (
    ImageRegionScores,
    ImageScore,
    Job,
    ModelVersion,
    Project,
    Round,
    Task,
    User,
)
from activeseg.datasets.digits import digits
from activeseg.datasets.importer import import_dataset
from activeseg.jobs.registry import inline_dispatcher
from tests.conftest import Stack
from tests.utils import unique

SMALL_MODEL = ModelSettings(
    method="mc_dropout",
    mc_samples=3,
    depth=2,
    base_channels=8,
    steps=20,
    batch_size=4,
    patch_size=64,
    patience=None,
)


@pytest.fixture
def project(stack: Stack) -> tuple[int, dict[int, np.ndarray], User]:
    settings = ProjectSettings(
        region_kind="grid",
        region_size=16,
        batch_size=12,
        per_image_cap=2,
        measure="mutual_information",
        model=SMALL_MODEL,
    )
    with stack.db.session() as s:  # type: ignore[attr-defined]
        owner = User(name=unique("owner"), role="engineer")
        s.add(owner)
        s.flush()
        imported = import_dataset(
            s,
            stack.store,
            owner,
            unique("digits"),  # type: ignore[arg-type]
            digits(20, seed=3),
            settings,
        )
        s.expunge(owner)
        return imported.project.id, imported.ground_truth, owner


def run(stack: Stack, project_id: int, kind: str, params: dict[str, Any] | None = None) -> Job:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        job, _ = request_job(s, project_id=project_id, kind=kind, params=params or {})
        job_id = job.id
    inline_dispatcher(stack.db, stack.store, stack.settings)(job_id)  # type: ignore[arg-type]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        job = s.get(Job, job_id)
        s.expunge(job)
    assert job.state == "succeeded", job.error
    return job


def label_all_queued(
    stack: Stack, project_id: int, truth: dict[int, np.ndarray], user: User
) -> int:
    """A scripted annotator: lease every queued task, answer with the region's majority class."""
    n = 0
    while True:
        with stack.db.session() as s:  # type: ignore[attr-defined]
            project = s.get(Project, project_id)
            task = tasks.lease_next(s, project, user, 60)
            if task is None:
                return n
            image = s.get(
                __import__("activeseg.core.tables", fromlist=["Image"]).Image, task.image_id
            )
            _, regions = region_set(
                s,
                stack.store,  # type: ignore[attr-defined,arg-type]
                image,  # type: ignore[arg-type]
                task.region_kind,
                task.region_size,
                task.region_sigma,
            )
            gt = truth[task.image_id]
            answer = {r: int(np.bincount(gt[regions.labels == r]).argmax()) for r in task.regions}
            tasks.submit(s, stack.store, project, task, user, tasks.Submission(answer))  # type: ignore[arg-type]
            n += 1


@pytest.mark.slow
def test_bootstrap_label_retrain_rescore_requeue(stack: Stack, project) -> None:  # type: ignore[no-untyped-def]
    pid, truth, user = project
    first = run(stack, pid, "build_queue")
    assert first.result["round"] == 1 and first.result["strategy"] == "random"
    assert first.result["tasks"] == 12
    with stack.db.session() as s:  # type: ignore[attr-defined]
        queued = s.scalars(select(Task).where(Task.project_id == pid)).all()
        per_image = np.bincount([t.image_id for t in queued])
        assert per_image.max() <= 2  # the per-image cap
        assert all(t.model_version_id is None for t in queued)

    assert label_all_queued(stack, pid, truth, user) == 12
    retrained = run(stack, pid, "retrain")
    mv_id = retrained.result["model_version_id"]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        project = s.get(Project, pid)
        mv = s.get(ModelVersion, mv_id)
        assert project.active_model_id == mv_id and mv.version == 1
        assert 0 <= mv.metrics["miou"] <= 1 and mv.temperature is not None
        # The chain re-scored the pool with the new version ...
        pool = s.scalar(
            select(func.count(func.distinct(ImageScore.image_id))).where(
                ImageScore.model_version_id == mv_id
            )
        )
        assert pool == 16  # 20 images: 2 test, 2 val, 16 pool
        rows = {
            r.image_id: ScoredImage.from_row(r)
            for r in s.scalars(
                select(ImageRegionScores).where(ImageRegionScores.model_version_id == mv_id)
            )
        }
        assert len(rows) == 16  # one row per image, every measure in it
        measures = set(next(iter(rows.values())).measures)
        assert {"entropy", "margin", "mutual_information", "variation_ratio"} <= measures
        # ... and built round 2 from the new scores, leased in the sampled order (priority =
        # minus the position), one of them a hidden control (control_fraction 0.1 of 12).
        rnd = s.scalar(select(Round).where(Round.project_id == pid, Round.number == 2))
        assert rnd is not None and rnd.model_version_id == mv_id and rnd.n_tasks == 12
        new = s.scalars(select(Task).where(Task.round_id == rnd.id)).all()
        for t in new:
            scored = rows[t.image_id]
            score = scored.measure("mutual_information")
            assert score is not None and np.isfinite(score[t.regions[0]])
            # the task carries the model's majority class of its region
            assert t.proposed_classes == [int(scored.classes[t.regions[0]])]
        assert sorted(t.priority for t in new) == [-float(i) for i in range(11, -1, -1)]
        assert sum(t.control for t in new) == 1
        # Regions labelled in round 1 are never queued again.
        done = {(t.image_id, t.region_key) for t in queued}
        assert not done & {(t.image_id, t.region_key) for t in new}
