"""The orphan-blob sweep: delete blobs that no row references and that are past a grace period.

Services write a blob first and commit its row after, so that no row ever points at a missing
blob. The price is that a failure in between (a full disk on the third image of an upload, a
crashed worker, a rolled-back transaction) leaves blobs nobody references. This sweep finds
them and deletes them, and only them:

- *referenced* means named by any row: every blob-key column below, and any sha256-shaped
  string inside the JSON columns that carry keys (checkpoints, report plots, job parameters
  and results such as an evaluate job's ``baseline_key``);
- a blob younger than the grace period is never deleted, because its row may not be committed
  yet; ``put`` of an existing key refreshes the blob's age, so a blob that is being referenced
  again starts a new grace period;
- the order is: list old blobs, *then* read the references, then re-check each blob's age
  right before deleting it. A row committed after the references were read needed a ``put``
  after the listing, which made the blob young again, so the re-check keeps it.

A ``*_key`` column that is not classified below is treated as holding blob keys (a new column
can only make the sweep keep more, never delete something it should not); the test suite
fails until it is classified.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from activeseg.core.db import Database
from activeseg.core.storage import BlobStore, is_blob_key
from activeseg.core.tables import (
    Base,
    Image,
    ImageScore,
    Job,
    LabelRevision,
    ModelVersion,
    RegionSet,
    Task,
    TaskAnswer,
    ToolAnnotation,
)

log = logging.getLogger(__name__)

# Columns whose value is one blob key.
BLOB_KEY_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = (
    Image.blob_key,
    LabelRevision.blob_key,
    RegionSet.blob_key,
    Task.region_map_key,  # the same blob as its region_sets row, named on the task for leases
    ImageScore.heatmap_key,
    ImageScore.prediction_key,
    ToolAnnotation.blob_key,  # a labelling tool's contribution (values painted, prior values)
    TaskAnswer.blob_key,  # one annotator's answer to a task of a project with overlap > 1
)
# JSON columns that may hold blob keys anywhere inside (lists, dict values).
BLOB_KEY_JSON_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = (
    ModelVersion.member_keys,  # ensemble member checkpoints
    ModelVersion.report,  # report["plots"]: {name: key}, the baseline key
    Job.params,  # evaluate: baseline_key
    Job.result,
)
# ``*_key`` columns that are not blob keys.
NOT_BLOB_KEY_COLUMNS = frozenset(
    {
        "tasks.region_key",
        "label_revisions.idempotency_key",
        "webhook_deliveries.source_key",
    }
)


def _keys_in(value: Any) -> Iterator[str]:
    """Every sha256-shaped string anywhere inside a JSON value."""
    if isinstance(value, str):
        if is_blob_key(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _keys_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys_in(item)


def _qualified(column: Any) -> str:
    """``table.column`` of a Column or of an ORM attribute."""
    column = getattr(column, "expression", column)
    return f"{column.table.name}.{column.name}"


def unclassified_key_columns() -> list[Column[Any]]:
    """``*_key`` / ``*_keys`` columns of the schema that this module does not know about."""
    known = {_qualified(c) for c in BLOB_KEY_COLUMNS + BLOB_KEY_JSON_COLUMNS}
    known |= NOT_BLOB_KEY_COLUMNS
    found = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            named_key = column.name.endswith(("_key", "_keys"))
            if named_key and _qualified(column) not in known:
                found.append(column)
    return found


def referenced_keys(session: Session) -> set[str]:
    """Every blob key some row references."""
    keys: set[str] = set()
    plain: list[Any] = list(BLOB_KEY_COLUMNS)
    nested: list[Any] = list(BLOB_KEY_JSON_COLUMNS)
    for column in unclassified_key_columns():
        log.warning("orphan sweep: %s is not classified; keeping what it names", column)
        (nested if isinstance(column.type, JSON) else plain).append(column)
    for column in plain:
        keys.update(k for k in session.scalars(select(column).distinct()) if isinstance(k, str))
    for column in nested:
        for value in session.scalars(select(column).execution_options(yield_per=500)):
            keys.update(_keys_in(value))
    return keys


@dataclass(frozen=True)
class SweepResult:
    """What one sweep saw and did."""

    old: int  # blobs older than the grace period
    referenced: int  # of those, still referenced by a row (kept)
    removed: list[str] = field(default_factory=list)  # deleted orphans
    skipped: int = 0  # orphans re-put during the sweep (a row may be on its way), or gone

    def summary(self) -> dict[str, int]:
        return {
            "old": self.old,
            "referenced": self.referenced,
            "removed": len(self.removed),
            "skipped": self.skipped,
        }


def sweep_orphan_blobs(
    db: Database, store: BlobStore, grace_s: float, *, now: datetime | None = None
) -> SweepResult:
    """Delete blobs that no row references and that are older than ``grace_s`` seconds."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=grace_s)
    old = store.keys_older_than(cutoff)  # first: see the module docstring for the order
    if not old:
        return SweepResult(old=0, referenced=0)
    with db.session() as s:
        refs = referenced_keys(s)
    orphans = [k for k in old if k not in refs]
    removed: list[str] = []
    for key in orphans:
        if store.delete_if_older(key, cutoff):
            removed.append(key)
    result = SweepResult(
        old=len(old),
        referenced=len(old) - len(orphans),
        removed=removed,
        skipped=len(orphans) - len(removed),
    )
    log.info("orphan sweep: %s", result.summary())
    return result
