"""Writing a round: the round row and its tasks appear together, or not at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from activeseg.core.db import Database
from activeseg.core.services.tasks import mark_stale
from activeseg.core.tables import Image, RegionSet, Round, Split, Task

Pick = tuple[int, int, int]
"""(image id, region, proposed class; -1 without a model) of one queued region."""


@dataclass(frozen=True)
class RoundDraft:
    """A round before it is written: who drew it, with what, and its tasks in lease order."""

    project_id: int
    number: int
    job_id: int
    model_version_id: int | None
    measure: str  # "random" without a model
    strategy: str
    region: tuple[str, int, float]  # kind, size, sigma of the tasks' regions
    picks: list[Pick]
    is_control: list[bool]

    def task_rows(self) -> list[dict[str, Any]]:
        """The tasks' rows (without ``round_id``): leased highest priority first, so the first
        of the sampled order goes first."""
        kind, size, sigma = self.region
        with_model = self.model_version_id is not None
        return [
            {
                "project_id": self.project_id,
                "image_id": image_id,
                "regions": [region],
                "region_key": str(region),
                "region_kind": kind,
                "region_size": size,
                "region_sigma": sigma,
                "model_version_id": self.model_version_id,
                "measure": self.measure,
                "priority": -float(position),
                "control": bool(control),
                "proposed_classes": [cls] if with_model else None,
            }
            for position, ((image_id, region, cls), control) in enumerate(
                zip(self.picks, self.is_control, strict=True)
            )
        ]


# Each task of a round names its region map's blob (the row build_queue made or found): the
# lease and the submit then read the map without looking the row up. One statement, in the
# round's transaction; a task whose map is not stored keeps NULL and looks it up.
_NAME_REGION_MAPS = (
    update(Task)
    .where(Task.round_id == bindparam("rid"))
    .values(
        region_map_key=select(RegionSet.blob_key)
        .where(
            RegionSet.image_id == Task.image_id,
            RegionSet.kind == Task.region_kind,
            RegionSet.size == Task.region_size,
            RegionSet.sigma == Task.region_sigma,
        )
        .scalar_subquery()
    )
    .execution_options(synchronize_session=False)  # no task of the round is loaded
)


def commit_round(db: Database, draft: RoundDraft) -> int:
    """Write the round and its tasks in one transaction (rows built before it opens), after
    marking the queued tasks of other versions stale; the number marked stale. The round row
    is what a redelivered job finds."""
    task_rows = draft.task_rows()
    with db.session() as s:
        stale = mark_stale(s, draft.project_id, draft.model_version_id)
        labelled = (
            s.scalar(
                select(func.coalesce(func.sum(Image.labelled_pixels), 0)).where(
                    Image.project_id == draft.project_id, Image.split == Split.pool.value
                )
            )
            or 0
        )
        rnd = Round(
            project_id=draft.project_id,
            number=draft.number,
            model_version_id=draft.model_version_id,
            measure=draft.measure,
            strategy=draft.strategy,
            n_tasks=len(draft.picks),
            labelled_pixels=int(labelled),
            job_id=draft.job_id,
        )
        s.add(rnd)
        s.flush()
        if task_rows:
            s.execute(insert(Task), [{**row, "round_id": rnd.id} for row in task_rows])
            s.execute(_NAME_REGION_MAPS, {"rid": rnd.id})
    return stale
