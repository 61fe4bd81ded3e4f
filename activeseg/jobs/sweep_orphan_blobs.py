"""sweep_orphan_blobs: the periodic job that prunes unneeded scores and deletes blobs no row
references.

A job (not a step of the maintenance task) so that it runs on a worker with the worker's own
database and store, one at a time, and leaves a row saying what it removed. The maintenance
task requests it every ``ORPHAN_SWEEP_EVERY_S`` (activeseg/worker/dispatch.py).

It first prunes the scores of every project's model versions that are no longer needed
(:func:`activeseg.core.services.scores.prune_scores`: not active, queuing no open task, named
by no unfinished job), then sweeps: heatmap blobs another row still names stay either way.
"""

from __future__ import annotations

from typing import Any

from activeseg.core.services import blobs
from activeseg.core.services.scores import prune_scores
from activeseg.jobs.runner import JobContext


def sweep_orphan_blobs(ctx: JobContext, grace_s: float | None = None) -> dict[str, Any]:
    """``grace_s``: override ``ACTIVESEG_ORPHAN_BLOB_GRACE_S`` for this run."""
    grace = ctx.settings.orphan_blob_grace_s if grace_s is None else float(grace_s)
    pruned = prune_scores(ctx.db, ctx.store)
    result = blobs.sweep_orphan_blobs(ctx.db, ctx.store, grace)
    return {**result.summary(), "grace_s": grace, "pruned_scores": pruned}
