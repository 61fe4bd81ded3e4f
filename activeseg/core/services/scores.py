"""Region scores that scale: one row per (model version, image), chunk candidates that merge
into the next queue, and the pruning of scores nobody needs.

Layout. ``score_pool`` writes, per (version, image), one ``image_region_scores`` row (every
measure's pooled score per region as one float32 ``[M, R]`` array, the majority predicted
class per region, the region centres and the regions still open to labelling) and one
``image_scores`` row naming the heatmap blob (the per-pixel maps and the prediction, for
display and for submissions). Two rows per image whatever the number of measures or regions.

Candidates. Each scoring chunk also stores what it offers the next queue (one
``score_candidates`` row): the best ``n_select`` selection keys of its images after the
per-image rules and its best control draws (:func:`activeseg.uncertainty.selection.
ranked_selection` / ``ranked_controls``). The random keys are :func:`activeseg.uncertainty.
selection.hashed_gumbel` of (project seed, model version, image, region), so a chunk computes
the keys the whole pool would: ``build_queue`` takes the best of the chunks' bests
(:func:`plan_merged`) and gets the queue a computation over every score gives
(:func:`plan_full`), in time and memory that depend on the batch and the number of chunks.

Filtering since scoring. A region is a candidate when it was open to labelling when scored and
is not busy now (an open task holds it). An image with a busy region, or whose labels changed
since it was scored (its region fractions are read again), is recomputed from its row; an
image that left the pool or is fully labelled is dropped. Regions only leave the candidates
between two scorings: a region whose labels were removed returns at the next scoring. When
the chunks' entries cannot decide the batch (filtering reached past what an incomplete chunk
kept, the settings changed since scoring, a chunk is missing, or ``softrank``), the plan is
computed from every row (:func:`plan_full`).

Pruning (:func:`prune_scores`). The scores of a model version (its rows here and the heatmap
blobs only they name) are removed once the version is not *needed*: it is needed while it is
its project's active version, while a task it queued is still open (queued, leased or
disputed: a submission counts the pixels the queuing model got wrong from its heatmap blob),
or while an unfinished job names it (a scoring pass, a queue build, an evaluation). Reports
need no scores: an evaluation predicts from the version's checkpoints, and its report, plots
and checkpoints are never pruned; the rounds report reads the tasks' own figures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Text, cast, delete, exists, func, insert, select
from sqlalchemy.orm import Session

from activeseg.core.db import Database
from activeseg.core.project_config import ProjectSettings
from activeseg.core.services.labels import read_mask, with_mask_key
from activeseg.core.services.regions import ensure_region_map, region_sigma
from activeseg.core.storage import BlobStore
from activeseg.core.tables import (
    Image,
    ImageRegionScores,
    ImageScore,
    Job,
    JobState,
    ModelVersion,
    Project,
    ScoreCandidates,
    Split,
    Task,
    TaskState,
)
from activeseg.uncertainty.pooling import labelled_fraction
from activeseg.uncertainty.selection import (
    MERGEABLE_STRATEGIES,
    control_depth,
    draw_controls,
    hashed_gumbel,
    interleave,
    ranked_controls,
    ranked_selection,
    select_regions,
)

log = logging.getLogger(__name__)

SELECT_STREAM = 0  # hashed_gumbel stream of the selection keys
CONTROL_STREAM = 1  # ... and of the control draw
ENTRY = np.dtype(
    [("image", "<i8"), ("region", "<i4"), ("revision", "<i4"), ("cls", "<i2"), ("key", "<f8")]
)
"""One candidate of a chunk: image id, region, the image's label revision when scored, the
model's majority class of the region, and its sort key (descending; ties: image, region)."""
WRITE_BATCH_BYTES = 8 << 20  # score_pool flushes its rows at this many bytes (or 64 images)
IN_BATCH = 1000  # ids per IN (...) list
OPEN_TASK_STATES = (TaskState.queued.value, TaskState.leased.value, TaskState.disputed.value)
UNFINISHED_JOB_STATES = (
    JobState.pending.value,
    JobState.queued.value,
    JobState.running.value,
    JobState.waiting.value,
)


# --- what a queue is drawn with ------------------------------------------------------------


@dataclass(frozen=True)
class QueueParams:
    """Everything a round's draw depends on besides the scores: the candidates a chunk stores
    are valid for a build with equal params (compared as :meth:`as_json`)."""

    measure: str
    strategy: str
    beta: float
    per_image_cap: int | None
    min_distance: float | None
    seed: int
    n_select: int
    n_control: int
    region_kind: str
    region_size: int
    region_sigma: float

    @classmethod
    def from_settings(cls, settings: ProjectSettings, strategy: str | None = None) -> QueueParams:
        n_control = round(settings.batch_size * settings.control_fraction)
        return cls(
            measure=settings.measure,
            strategy=strategy or settings.strategy,
            beta=float(settings.beta),
            per_image_cap=settings.per_image_cap,
            min_distance=settings.min_distance,
            seed=int(settings.seed),
            n_select=settings.batch_size - n_control,
            n_control=n_control,
            region_kind=settings.region_kind,
            region_size=settings.region_size,
            region_sigma=region_sigma(settings.region_kind, settings.slic_sigma),
        )

    @property
    def mergeable(self) -> bool:
        return self.strategy in MERGEABLE_STRATEGIES

    @property
    def region(self) -> tuple[str, int, float]:
        return (self.region_kind, self.region_size, self.region_sigma)

    def as_json(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "strategy": self.strategy,
            "beta": self.beta,
            "per_image_cap": self.per_image_cap,
            "min_distance": self.min_distance,
            "seed": self.seed,
            "n_select": self.n_select,
            "n_control": self.n_control,
            "region_kind": self.region_kind,
            "region_size": self.region_size,
            "region_sigma": self.region_sigma,
        }


# --- one image's scores ----------------------------------------------------------------------


@dataclass
class ScoredImage:
    """What one scoring pass stores for one image (one ``image_region_scores`` row)."""

    image_id: int
    revision: int  # the image's label revision ``open_regions`` was computed from
    measures: list[str]
    scores: npt.NDArray[np.float32]  # [M, R]
    classes: npt.NDArray[np.int16]  # [R]
    centroids: npt.NDArray[np.float32]  # [R, 2]
    open_regions: npt.NDArray[np.bool_]  # [R]
    region: tuple[str, int, float]
    means: dict[str, float] = field(default_factory=dict)
    heatmap_key: str = ""

    @classmethod
    def build(
        cls,
        image_id: int,
        revision: int,
        values: dict[str, npt.NDArray[Any]],
        classes: npt.NDArray[Any],
        centroids: npt.NDArray[Any],
        open_regions: npt.NDArray[np.bool_],
        region: tuple[str, int, float],
        means: dict[str, float] | None = None,
        heatmap_key: str = "",
    ) -> ScoredImage:
        names = list(values)
        n = int(classes.shape[0])
        scores = (
            np.stack([np.asarray(values[m], np.float32) for m in names])
            if names
            else np.zeros((0, n), np.float32)
        )
        return cls(
            image_id=int(image_id),
            revision=int(revision),
            measures=names,
            scores=scores,
            classes=np.asarray(classes, np.int16),
            centroids=np.asarray(centroids, np.float32).reshape(n, 2),
            open_regions=np.asarray(open_regions, np.bool_),
            region=(region[0], int(region[1]), float(region[2])),
            means=dict(means or {}),
            heatmap_key=heatmap_key,
        )

    @property
    def n_regions(self) -> int:
        return int(self.classes.shape[0])

    def measure(self, name: str) -> npt.NDArray[np.float64] | None:
        """float64 ``[R]`` scores of ``name`` (the float32 stored), NaN where not open."""
        if name not in self.measures:
            return None
        values = self.scores[self.measures.index(name)].astype(np.float64)
        values[~self.open_regions] = np.nan
        return values

    def row(self, mv_id: int) -> dict[str, Any]:
        return {
            "model_version_id": mv_id,
            "image_id": self.image_id,
            "region_kind": self.region[0],
            "region_size": self.region[1],
            "region_sigma": self.region[2],
            "labels_revision": self.revision,
            "n_regions": self.n_regions,
            "measures": list(self.measures),
            "means": {k: float(v) for k, v in self.means.items()},
            "scores": np.ascontiguousarray(self.scores, np.float32).tobytes(),
            "classes": np.ascontiguousarray(self.classes, "<i2").tobytes(),
            "centroids": np.ascontiguousarray(self.centroids, "<f4").tobytes(),
            "open_regions": np.packbits(self.open_regions).tobytes(),
        }

    @classmethod
    def from_row(cls, row: ImageRegionScores) -> ScoredImage:
        n = int(row.n_regions)
        measures = list(row.measures)
        return cls(
            image_id=int(row.image_id),
            revision=int(row.labels_revision),
            measures=measures,
            scores=np.frombuffer(row.scores, "<f4").reshape(len(measures), n),
            classes=np.frombuffer(row.classes, "<i2"),
            centroids=np.frombuffer(row.centroids, "<f4").reshape(n, 2),
            open_regions=np.unpackbits(np.frombuffer(row.open_regions, np.uint8), count=n).astype(
                np.bool_
            ),
            region=(row.region_kind, int(row.region_size), float(row.region_sigma)),
            means=dict(row.means or {}),
        )

    def nbytes(self) -> int:
        return int(self.scores.nbytes + self.classes.nbytes + self.centroids.nbytes)


def replace_scores(session: Session, mv_id: int, items: Sequence[ScoredImage], shown: str) -> None:
    """Replace the score rows of (``mv_id``, each item's image) in ``session``'s transaction:
    its ``image_region_scores`` row and its ``image_scores`` row (measure ``shown`` when it
    was computed, naming the heatmap blob). Idempotent: a redelivered chunk replaces what an
    earlier delivery wrote with the same rows."""
    if not items:
        return
    ids = [it.image_id for it in items]
    session.execute(
        delete(ImageScore).where(ImageScore.model_version_id == mv_id, ImageScore.image_id.in_(ids))
    )
    session.execute(
        delete(ImageRegionScores).where(
            ImageRegionScores.model_version_id == mv_id, ImageRegionScores.image_id.in_(ids)
        )
    )
    session.execute(insert(ImageRegionScores), [it.row(mv_id) for it in items])
    rows = []
    for it in items:
        name = shown if shown in it.means else (it.measures[0] if it.measures else shown)
        rows.append(
            {
                "model_version_id": mv_id,
                "image_id": it.image_id,
                "measure": name,
                "mean": float(it.means.get(name, 0.0)),
                "heatmap_key": it.heatmap_key,
                "prediction_key": it.heatmap_key,
            }
        )
    session.execute(insert(ImageScore), rows)


def write_scores(db: Database, mv_id: int, items: Sequence[ScoredImage], shown: str) -> None:
    """:func:`replace_scores` in one write transaction."""
    if items:
        with db.session() as s:
            replace_scores(s, mv_id, items, shown)


# --- candidates of images and chunks -------------------------------------------------------


def _order(entries: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``entries`` sorted best first: key descending, then image and region ascending (the
    candidates' global order, which breaks ties in :func:`select_regions`)."""
    if entries.size == 0:
        return entries
    return entries[np.lexsort((entries["region"], entries["image"], -entries["key"]))]


def _position(entry: Any) -> tuple[float, int, int]:
    return (-float(entry["key"]), int(entry["image"]), int(entry["region"]))


@dataclass
class ImageCandidates:
    """The entries of some whole images: selection entries (best first, at most
    ``n_select``) and control entries (draw order, at most ``2 * cap`` per image and the
    control depth)."""

    selected: npt.NDArray[Any]
    controls: npt.NDArray[Any]


def group_candidates(
    mv_id: int,
    params: QueueParams,
    items: Sequence[ScoredImage],
    busy: dict[int, set[int]] | None = None,
    still_open: dict[int, npt.NDArray[np.bool_]] | None = None,
) -> ImageCandidates:
    """The entries of whole images, computed in one vectorised pass: the scores of
    ``params.measure`` where the region was open when scored (and is in ``still_open``,
    when given for the image) and is not ``busy``. The images' entries are exactly their
    share of the global draw (:func:`activeseg.uncertainty.selection.ranked_selection`)."""
    parts = []
    for item in items:
        values = item.measure(params.measure)
        if values is None or item.n_regions == 0:
            continue
        if still_open is not None and item.image_id in still_open:
            values[~still_open[item.image_id]] = np.nan
        drop = [r for r in (busy or {}).get(item.image_id, ()) if 0 <= r < item.n_regions]
        if drop:
            values[drop] = np.nan
        parts.append((item, values))
    if not parts:
        return ImageCandidates(np.empty(0, ENTRY), np.empty(0, ENTRY))
    values = np.concatenate([v for _, v in parts])
    image_ids = np.concatenate([np.full(it.n_regions, it.image_id, np.int64) for it, _ in parts])
    regions = np.concatenate([np.arange(it.n_regions, dtype=np.int64) for it, _ in parts])
    revisions = np.concatenate([np.full(it.n_regions, it.revision, np.int32) for it, _ in parts])
    classes = np.concatenate([it.classes for it, _ in parts])
    image_index = np.repeat(np.arange(len(parts)), [it.n_regions for it, _ in parts])
    centroids = None
    if params.min_distance is not None:
        centroids = np.concatenate([it.centroids for it, _ in parts]).astype(np.float64)

    def entries(idx: npt.NDArray[np.int64], keys: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        out = np.empty(idx.size, ENTRY)
        out["image"] = image_ids[idx]
        out["region"] = regions[idx]
        out["revision"] = revisions[idx]
        out["cls"] = classes[idx]
        out["key"] = keys
        return out

    sel_noise = hashed_gumbel(params.seed, mv_id, image_ids, regions, SELECT_STREAM)
    picked, keys, _ = ranked_selection(
        values,
        image_index,
        params.n_select,
        sel_noise,
        strategy=params.strategy,  # type: ignore[arg-type]
        per_image_cap=params.per_image_cap,
        min_distance=params.min_distance,
        centroids=centroids,
        beta=params.beta,
    )
    drawn: npt.NDArray[np.int64] = np.empty(0, np.int64)
    ctl_noise = np.empty(0, np.float64)
    if params.n_control:
        ctl_noise = hashed_gumbel(params.seed, mv_id, image_ids, regions, CONTROL_STREAM)
        drawn, _ = ranked_controls(
            values, image_index, params.n_select, params.n_control, ctl_noise, params.per_image_cap
        )
    return ImageCandidates(
        entries(picked, keys), entries(drawn, ctl_noise[drawn] if drawn.size else ctl_noise[:0])
    )


def image_candidates(
    mv_id: int,
    params: QueueParams,
    item: ScoredImage,
    busy: Iterable[int] = (),
    still_open: npt.NDArray[np.bool_] | None = None,
) -> ImageCandidates:
    """:func:`group_candidates` of one image."""
    return group_candidates(
        mv_id,
        params,
        [item],
        {item.image_id: set(busy)},
        None if still_open is None else {item.image_id: still_open},
    )


@dataclass
class ChunkCandidates:
    """What a chunk stores: the best ``n_select`` of its images' selection entries and the
    first ``control_depth`` of their control entries, each with whether nothing was cut."""

    selected: npt.NDArray[Any]
    selected_complete: bool
    controls: npt.NDArray[Any]
    controls_complete: bool

    @classmethod
    def merge(cls, params: QueueParams, parts: Iterable[ImageCandidates]) -> ChunkCandidates:
        parts = list(parts)
        sel = _order(np.concatenate([p.selected for p in parts] or [np.empty(0, ENTRY)]))
        ctl = _order(np.concatenate([p.controls for p in parts] or [np.empty(0, ENTRY)]))
        depth = control_depth(params.n_select, params.n_control)
        return cls(
            selected=sel[: params.n_select],
            selected_complete=bool(sel.size < params.n_select or params.n_select == 0),
            controls=ctl[:depth],
            controls_complete=bool(ctl.size <= depth),
        )


def chunk_candidates(
    mv_id: int, params: QueueParams, batches: Iterable[Sequence[ScoredImage]]
) -> ChunkCandidates:
    """What a scoring chunk offers the next queue: :func:`group_candidates` of each batch of
    its images (a batch is computed in one vectorised pass), merged. Pure numpy: the keys are
    hashed from (``params.seed``, ``mv_id``, image, region), so the result depends only on the
    images, not on how they are batched or chunked."""
    return ChunkCandidates.merge(
        params, [group_candidates(mv_id, params, batch) for batch in batches if batch]
    )


def forget_candidates(db: Database, mv_id: int, image_ids: Sequence[int]) -> None:
    """Delete the candidates of the version's chunks that overlap ``image_ids``' id range:
    a chunk does this before it writes its scores, so a chunk that dies half-way leaves its
    images uncovered (the next build computes the full plan) rather than covered by entries
    older than their rows."""
    first, last = min(image_ids), max(image_ids)
    with db.session() as s:
        s.execute(
            delete(ScoreCandidates).where(
                ScoreCandidates.model_version_id == mv_id,
                ScoreCandidates.first_image_id <= last,
                ScoreCandidates.last_image_id >= first,
            )
        )


def write_candidates(
    db: Database,
    mv_id: int,
    image_ids: Sequence[int],
    n_images: int,
    params: QueueParams,
    chunk: ChunkCandidates,
) -> None:
    """Store a chunk's candidates, replacing any chunk of the version whose id range overlaps
    (a redelivered chunk, or an earlier scoring pass). The row marks the chunk complete: it is
    written after every score row of the chunk."""
    first, last = min(image_ids), max(image_ids)
    with db.session() as s:
        s.execute(
            delete(ScoreCandidates).where(
                ScoreCandidates.model_version_id == mv_id,
                ScoreCandidates.first_image_id <= last,
                ScoreCandidates.last_image_id >= first,
            )
        )
        s.add(
            ScoreCandidates(
                model_version_id=mv_id,
                first_image_id=first,
                last_image_id=last,
                n_images=n_images,
                params=params.as_json(),
                selected=chunk.selected.tobytes(),
                selected_complete=chunk.selected_complete,
                controls=chunk.controls.tobytes(),
                controls_complete=chunk.controls_complete,
            )
        )


# --- a round's plan ------------------------------------------------------------------------


@dataclass
class RoundPlan:
    """The selected entries (sampled order) and the controls (draw order) of a round."""

    selected: npt.NDArray[Any]
    controls: npt.NDArray[Any]
    path: str  # "merged" (the chunks' candidates) or "full" (every score row)
    candidates: int  # merged: chunk entries read; full: eligible candidates
    chunks: int = 0
    recomputed: int = 0  # images recomputed from their rows (busy or labelled since scoring)
    reason: str = ""  # why the merged path was not taken

    def lease_order(
        self, rng: np.random.Generator
    ) -> tuple[list[tuple[int, int, int]], npt.NDArray[np.bool_]]:
        """The round's tasks in lease order: ``([(image, region, class)], is_control [B])``,
        the controls placed at random positions drawn from ``rng`` (the round's stream)."""
        n_sel = self.selected.size
        order, is_control = interleave(
            np.arange(n_sel), np.arange(n_sel, n_sel + self.controls.size), seed=rng
        )
        both = np.concatenate([self.selected, self.controls])[order]
        picks = [
            (int(i), int(r), int(c))
            for i, r, c in zip(both["image"], both["region"], both["cls"], strict=True)
        ]
        return picks, is_control

    def pairs(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        def as_list(e: npt.NDArray[Any]) -> list[tuple[int, int]]:
            return [(int(i), int(r)) for i, r in zip(e["image"], e["region"], strict=True)]

        return as_list(self.selected), as_list(self.controls)


def busy_by_image(keys: Iterable[tuple[int, str]]) -> dict[int, set[int]]:
    """``{image id: {region}}`` of :func:`activeseg.core.services.tasks.open_region_keys`."""
    out: dict[int, set[int]] = {}
    for image_id, key in keys:
        if key.isdigit():
            out.setdefault(int(image_id), set()).add(int(key))
    return out


def _still_open(
    db: Database, store: BlobStore, image: Image, mask_key: str | None, item: ScoredImage
) -> npt.NDArray[np.bool_]:
    """bool ``[R]``: the regions of ``item`` not fully labelled by the image's current mask
    (on the region map the scores index)."""
    kind, size, sigma = item.region
    regions = ensure_region_map(db, store, image, kind, size, sigma)
    mask = read_mask(store, image, mask_key)
    frac = labelled_fraction(mask, regions.labels, regions.n_regions)
    return np.asarray(~(frac >= 1.0), np.bool_)


def _in_batches(ids: Iterable[Any]) -> Iterable[list[Any]]:
    ordered = sorted(ids)
    for start in range(0, len(ordered), IN_BATCH):
        yield ordered[start : start + IN_BATCH]


def _recompute(
    db: Database,
    store: BlobStore,
    mv_id: int,
    params: QueueParams,
    images: dict[int, tuple[Image, str | None]],
    busy: dict[int, set[int]],
) -> dict[int, ImageCandidates]:
    """Fresh entries of ``images`` (image id -> (row, mask key)) from their score rows, with
    busy regions dropped and, for an image labelled since it was scored, its regions' current
    fractions."""
    items: dict[int, ScoredImage] = {}
    with db.read_session() as s:
        for part in _in_batches(list(images)):
            for row in s.scalars(
                select(ImageRegionScores).where(
                    ImageRegionScores.model_version_id == mv_id,
                    ImageRegionScores.image_id.in_(part),
                )
            ):
                items[int(row.image_id)] = ScoredImage.from_row(row)
    out: dict[int, ImageCandidates] = {}
    for image_id, (image, mask_key) in images.items():
        item = items.get(image_id)
        if item is None or item.region != params.region:
            out[image_id] = ImageCandidates(np.empty(0, ENTRY), np.empty(0, ENTRY))
            continue
        still = None
        if image.current_revision != item.revision:
            still = _still_open(db, store, image, mask_key, item)
        out[image_id] = image_candidates(mv_id, params, item, busy.get(image_id, ()), still)
    return out


@dataclass
class _Merge:
    """The state of :func:`plan_merged`: every chunk entry (sorted once, best first), and
    what is known of the images whose entries the plan reached."""

    selected: npt.NDArray[Any]
    controls: npt.NDArray[Any]
    gone: set[int] = field(default_factory=set)  # left the pool or fully labelled
    clean: set[int] = field(default_factory=set)  # entries valid as stored
    fresh: dict[int, ImageCandidates] = field(default_factory=dict)  # recomputed

    def known(self) -> set[int]:
        return self.gone | self.clean | set(self.fresh)

    def current(self, which: str, limit: int | None = None) -> npt.NDArray[Any]:
        """The valid entries best first: the stored ones of images not replaced and the
        recomputed ones; the first ``limit`` only (the best ``limit`` of the union are among
        the first ``limit`` stored and the recomputed)."""
        stored = self.selected if which == "selected" else self.controls
        replaced = np.asarray(sorted(self.gone | set(self.fresh)), np.int64)
        keep = stored[~np.isin(stored["image"], replaced)] if replaced.size else stored
        head = keep if limit is None else keep[:limit]
        extra = [getattr(c, which) for c in self.fresh.values()]
        if not extra:
            return head
        merged = _order(np.concatenate([head, *extra]))
        return merged if limit is None else merged[:limit]

    def revisions(self, image_ids: set[int]) -> dict[int, int]:
        """The label revision each image was scored at (from its stored entries)."""
        wanted = np.asarray(sorted(image_ids), np.int64)
        out: dict[int, int] = {}
        for stored in (self.selected, self.controls):
            hit = stored[np.isin(stored["image"], wanted)]
            out.update(zip(hit["image"].tolist(), hit["revision"].tolist(), strict=True))
        return out


def _walk_controls(
    entries: npt.NDArray[Any], chosen: set[tuple[int, int]], k: int, cap: int | None
) -> tuple[list[int], set[int]]:
    """:func:`draw_controls` over entries in draw order: positions accepted, images visited."""
    accepted: list[int] = []
    visited: set[int] = set()
    per_image: dict[int, int] = {}
    if k == 0:
        return accepted, visited
    for pos, (image, region) in enumerate(
        zip(entries["image"].tolist(), entries["region"].tolist(), strict=True)
    ):
        visited.add(image)
        if (image, region) in chosen:
            continue
        if cap is not None and per_image.get(image, 0) >= cap:
            continue
        per_image[image] = per_image.get(image, 0) + 1
        accepted.append(pos)
        if len(accepted) == k:
            break
    return accepted, visited


def _reaches_past(thresholds: list[Any], last: Any | None) -> bool:
    """True when some incomplete chunk cut entries that may precede ``last`` (None: the plan
    ran out of entries, so any cut entry could have been used)."""
    if not thresholds:
        return False
    if last is None:
        return True
    bound = _position(last)
    return any(_position(t) < bound for t in thresholds)


def plan_merged(
    db: Database,
    store: BlobStore,
    mv_id: int,
    params: QueueParams,
    busy: dict[int, set[int]],
) -> RoundPlan | str:
    """The round from the chunks' candidates, or why it cannot be decided from them (then
    :func:`plan_full` decides)."""
    if not params.mergeable:
        return f"strategy {params.strategy} is not mergeable"
    with db.read_session() as s:
        rows = s.execute(
            select(
                cast(ScoreCandidates.params, Text),
                ScoreCandidates.n_images,
                ScoreCandidates.selected,
                ScoreCandidates.selected_complete,
                ScoreCandidates.controls,
                ScoreCandidates.controls_complete,
            ).where(ScoreCandidates.model_version_id == mv_id)
        ).all()
        scored = s.scalar(
            select(func.count())
            .select_from(ImageRegionScores)
            .where(ImageRegionScores.model_version_id == mv_id)
        )
    if not rows:
        return "no chunk candidates"
    # Every chunk of a pass stores the same JSON text: decode one, compare the others' text.
    texts = {r[0] for r in rows}
    if len(texts) != 1 or json.loads(texts.pop()) != params.as_json():
        return "settings changed since scoring"
    if sum(int(r.n_images) for r in rows) != int(scored or 0):
        return "chunks do not cover the scored images"
    cuts: dict[str, list[Any]] = {}
    stored: dict[str, npt.NDArray[Any]] = {}
    for name, column, complete in (("selected", 2, 3), ("controls", 4, 5)):
        blobs: list[bytes] = [bytes(r[column]) for r in rows]  # type: ignore[arg-type]
        entries = np.frombuffer(b"".join(blobs), ENTRY)
        ends = np.cumsum([len(b) // ENTRY.itemsize for b in blobs])
        incomplete = [i for i, r in enumerate(rows) if not r[complete]]
        if any(ends[i] == (ends[i - 1] if i else 0) for i in incomplete):
            return "an incomplete chunk without entries"
        cuts[name] = [entries[ends[i] - 1] for i in incomplete]
        stored[name] = _order(entries)
    sel_cut, ctl_cut = cuts["selected"], cuts["controls"]
    state = _Merge(stored["selected"], stored["controls"])

    def settle(image_ids: set[int]) -> None:
        """Classify images: gone, clean, or recomputed from their rows."""
        found: dict[int, tuple[Image, str | None]] = {}
        with db.read_session() as s:
            for part in _in_batches(list(image_ids)):
                for image, mask_key in s.execute(
                    with_mask_key(select(Image).where(Image.id.in_(part)))
                ):
                    found[int(image.id)] = (image, mask_key)
        dirty: dict[int, tuple[Image, str | None]] = {}
        revision = state.revisions(image_ids)
        for image_id in image_ids:
            hit = found.get(image_id)
            if hit is None or hit[0].split != Split.pool.value or hit[0].labelled_fraction >= 1:
                state.gone.add(image_id)
            elif hit[0].current_revision != revision[image_id] or image_id in busy:
                dirty[image_id] = hit
            else:
                state.clean.add(image_id)
        state.fresh.update(_recompute(db, store, mv_id, params, dirty, busy))

    while True:
        top = state.current("selected", params.n_select)
        unknown = set(top["image"].tolist()) - state.known()
        if not unknown:
            break
        settle(unknown)
    if _reaches_past(sel_cut, top[-1] if top.size == params.n_select and top.size else None):
        return "filtering reached past a chunk's selection entries"
    chosen = set(zip(top["image"].tolist(), top["region"].tolist(), strict=True))
    limit: int | None = 2 * control_depth(params.n_select, params.n_control)
    while True:
        drawn = state.current("controls", limit)
        accepted, visited = _walk_controls(drawn, chosen, params.n_control, params.per_image_cap)
        if len(accepted) < params.n_control and limit is not None and drawn.size == limit:
            limit = None  # the walk needs more than the first entries
            continue
        unknown = visited - state.known()
        if not unknown:
            break
        settle(unknown)
    if params.n_control:
        last = drawn[accepted[-1]] if len(accepted) == params.n_control else None
        if _reaches_past(ctl_cut, last):
            return "filtering reached past a chunk's control entries"
    return RoundPlan(
        selected=top,
        controls=drawn[accepted] if accepted else np.empty(0, ENTRY),
        path="merged",
        candidates=int(state.selected.size + state.controls.size),
        chunks=len(rows),
        recomputed=len(state.fresh),
    )


def plan_full(
    db: Database,
    store: BlobStore,
    mv_id: int,
    params: QueueParams,
    busy: dict[int, set[int]],
) -> RoundPlan:
    """The round over every score row of the version (the reference :func:`plan_merged`
    equals): the pool images not fully labelled, scored on the project's region map, their
    open regions not busy; :func:`select_regions` and :func:`draw_controls` with the hashed
    keys. Reads every row of the version (the fallback, and ``softrank``)."""
    kind, size, sigma = params.region
    query = (
        select(
            ImageRegionScores.image_id,
            ImageRegionScores.labels_revision,
            ImageRegionScores.n_regions,
            cast(ImageRegionScores.measures, Text),
            ImageRegionScores.scores,
            ImageRegionScores.classes,
            ImageRegionScores.centroids,
            ImageRegionScores.open_regions,
            Image.current_revision,
        )
        .join(Image, ImageRegionScores.image_id == Image.id)
        .where(
            ImageRegionScores.model_version_id == mv_id,
            Image.split == Split.pool.value,
            Image.labelled_fraction < 1.0,
            ImageRegionScores.region_kind == kind,
            ImageRegionScores.region_size == size,
            ImageRegionScores.region_sigma == sigma,
        )
        .order_by(ImageRegionScores.image_id)
        .execution_options(yield_per=1000)
    )
    row_of: dict[str, int | None] = {}  # measures JSON text -> row of params.measure
    image_parts: list[npt.NDArray[np.int64]] = []
    region_parts: list[npt.NDArray[np.int64]] = []
    value_parts: list[npt.NDArray[np.float64]] = []
    cent_parts: list[npt.NDArray[np.float64]] = []
    class_parts: list[npt.NDArray[Any]] = []
    relabelled: dict[int, int] = {}  # image id -> position in the parts
    with db.read_session() as s:
        for image_id, revision, n, names, scores, cls_bytes, cents, open_bits, current in s.execute(
            query
        ):
            if names not in row_of:
                listed = json.loads(names)
                row_of[names] = listed.index(params.measure) if params.measure in listed else None
            m = row_of[names]
            if m is None or n == 0:
                continue
            values = np.frombuffer(scores, "<f4", count=n, offset=4 * m * n).astype(np.float64)
            is_open = np.unpackbits(np.frombuffer(open_bits, np.uint8), count=n).astype(np.bool_)
            values[~is_open] = np.nan
            for r in busy.get(image_id, ()):
                if 0 <= r < n:
                    values[r] = np.nan
            if current != revision:
                relabelled[int(image_id)] = len(value_parts)
            image_parts.append(np.full(n, image_id, np.int64))
            region_parts.append(np.arange(n, dtype=np.int64))
            value_parts.append(values)
            class_parts.append(np.frombuffer(cls_bytes, "<i2"))
            if params.min_distance is not None:
                cent_parts.append(np.frombuffer(cents, "<f4").reshape(n, 2).astype(np.float64))
    if relabelled:  # labelled since scoring: read their masks again (few images)
        with db.read_session() as s:
            rows = {
                int(image.id): (image, mask_key)
                for part in _in_batches(relabelled)
                for image, mask_key in s.execute(
                    with_mask_key(select(Image).where(Image.id.in_(part)))
                )
            }
            items = {
                int(row.image_id): ScoredImage.from_row(row)
                for part in _in_batches(relabelled)
                for row in s.scalars(
                    select(ImageRegionScores).where(
                        ImageRegionScores.model_version_id == mv_id,
                        ImageRegionScores.image_id.in_(part),
                    )
                )
            }
        for image_id, at in relabelled.items():
            image, mask_key = rows[image_id]
            still = _still_open(db, store, image, mask_key, items[image_id])
            value_parts[at][~still] = np.nan
    if not value_parts:
        empty = np.empty(0, ENTRY)
        return RoundPlan(empty, empty, "full", 0)
    image_ids = np.concatenate(image_parts)
    regions = np.concatenate(region_parts)
    values = np.concatenate(value_parts)
    centroids = np.concatenate(cent_parts) if cent_parts else None
    classes = np.concatenate(class_parts)
    image_index = np.repeat(np.arange(len(image_parts)), [p.size for p in image_parts])
    sel_noise = hashed_gumbel(params.seed, mv_id, image_ids, regions, SELECT_STREAM)
    picked = select_regions(
        values,
        image_index,
        params.n_select,
        strategy=params.strategy,  # type: ignore[arg-type]
        per_image_cap=params.per_image_cap,
        min_distance=params.min_distance,
        centroids=centroids,
        beta=params.beta,
        noise=sel_noise,
    )
    ctl_noise = hashed_gumbel(params.seed, mv_id, image_ids, regions, CONTROL_STREAM)
    drawn = draw_controls(
        values, image_index, picked, params.n_control, params.per_image_cap, noise=ctl_noise
    )

    def entries(idx: npt.NDArray[np.int64], keys: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        out = np.empty(idx.size, ENTRY)
        out["image"], out["region"], out["cls"], out["key"] = (
            image_ids[idx],
            regions[idx],
            classes[idx],
            keys,
        )
        out["revision"] = 0
        return out

    return RoundPlan(
        selected=entries(picked, sel_noise[picked]),
        controls=entries(drawn, ctl_noise[drawn]),
        path="full",
        candidates=int(np.isfinite(values).sum()),
    )


def plan_queue(
    db: Database,
    store: BlobStore,
    mv_id: int,
    params: QueueParams,
    busy: dict[int, set[int]],
) -> RoundPlan:
    """:func:`plan_merged` when the chunks decide the round, else :func:`plan_full`."""
    merged = plan_merged(db, store, mv_id, params, busy)
    if isinstance(merged, RoundPlan):
        return merged
    log.info("version %s: full queue computation (%s)", mv_id, merged)
    plan = plan_full(db, store, mv_id, params, busy)
    plan.reason = merged
    return plan


# --- pruning -------------------------------------------------------------------------------


def needed_versions(session: Session, project_id: int | None = None) -> set[int]:
    """Versions whose scores must stay (see the module docstring): active, queuing an open
    task, or named by an unfinished job."""
    projects = select(Project.active_model_id).where(Project.active_model_id.is_not(None))
    tasks = select(Task.model_version_id).where(
        Task.model_version_id.is_not(None), Task.state.in_(OPEN_TASK_STATES)
    )
    jobs = select(Job.params).where(Job.state.in_(UNFINISHED_JOB_STATES))
    if project_id is not None:
        projects = projects.where(Project.id == project_id)
        tasks = tasks.where(Task.project_id == project_id)
        jobs = jobs.where(Job.project_id == project_id)
    keep = {int(v) for v in session.scalars(projects) if v is not None}
    keep |= {int(v) for v in session.scalars(tasks.distinct()) if v is not None}
    for params in session.scalars(jobs):
        named = (params or {}).get("model_version_id")
        if isinstance(named, int):
            keep.add(named)
    return keep


def _scored_versions(session: Session, project_id: int | None, skip: set[int]) -> set[int]:
    """Versions (of the project, or of all) not in ``skip`` that have score rows: one index
    probe per table and version, never a scan of the scores."""
    versions = select(ModelVersion.id)
    if project_id is not None:
        versions = versions.where(ModelVersion.project_id == project_id)
    found: set[int] = set()
    for mv_id in session.scalars(versions):
        if mv_id in skip:
            continue
        for table in (ImageRegionScores, ImageScore, ScoreCandidates):
            if session.scalar(select(exists().where(table.model_version_id == mv_id))):
                found.add(int(mv_id))
                break
    return found


def prune_scores(
    db: Database,
    store: BlobStore,
    project_id: int | None = None,
    *,
    batch: int = 2000,
    now: datetime | None = None,
) -> dict[str, int]:
    """Delete the scores of versions that are not needed (:func:`needed_versions`): their
    score rows, in write transactions of ``batch`` rows, then the heatmap blobs no row names
    any more (``delete_if_older`` than the start, so a blob put again meanwhile stays).
    Rows written after the start (a new scoring of a version needed again) are kept.

    Returns ``{"versions", "rows", "blobs"}`` removed."""
    started = now or datetime.now(UTC)
    with db.read_session() as s:
        drop = sorted(_scored_versions(s, project_id, needed_versions(s, project_id)))
    rows = blobs = 0
    for mv_id in drop:
        with db.read_session() as s:
            project = s.scalar(select(ModelVersion.project_id).where(ModelVersion.id == mv_id))
            if project is None or mv_id in needed_versions(s, project):
                continue
            score_ids = list(
                s.scalars(select(ImageScore.id).where(ImageScore.model_version_id == mv_id))
            )
            keys = set(
                s.scalars(
                    select(ImageScore.heatmap_key).where(ImageScore.model_version_id == mv_id)
                )
            ) | {
                k
                for k in s.scalars(
                    select(ImageScore.prediction_key).where(ImageScore.model_version_id == mv_id)
                )
                if k
            }
            region_ids = list(
                s.scalars(
                    select(ImageRegionScores.id).where(ImageRegionScores.model_version_id == mv_id)
                )
            )
            cand_ids = list(
                s.scalars(
                    select(ScoreCandidates.id).where(ScoreCandidates.model_version_id == mv_id)
                )
            )
        for table, ids in (
            (ScoreCandidates, cand_ids),
            (ImageScore, score_ids),
            (ImageRegionScores, region_ids),
        ):
            for start in range(0, len(ids), batch):
                with db.session() as s:
                    res = s.execute(delete(table).where(table.id.in_(ids[start : start + batch])))
                    rows += int(res.rowcount)  # type: ignore[attr-defined]
        blobs += _delete_unnamed(db, store, keys, started)
    return {"versions": len(drop), "rows": rows, "blobs": blobs}


def _delete_unnamed(db: Database, store: BlobStore, keys: set[str], started: datetime) -> int:
    """Delete the blobs of ``keys`` that no blob-key column names (heatmap blobs are
    content-addressed: another version's identical maps share one) and that were not put
    since ``started``."""
    from activeseg.core.services.blobs import BLOB_KEY_COLUMNS

    named: set[str] = set()
    with db.read_session() as s:
        for part in _in_batches(keys):
            for column in BLOB_KEY_COLUMNS:
                named |= set(s.scalars(select(column).where(column.in_(part)).distinct()))
    from activeseg.core.storage import is_blob_key

    removed = 0
    for key in sorted(keys - named):
        if not is_blob_key(key):  # a malformed value names no blob: never stop a sweep on it
            log.warning("pruning scores: %r is not a blob key; skipped", key)
            continue
        if store.delete_if_older(key, started):
            removed += 1
    return removed


__all__ = [
    "ENTRY",
    "ChunkCandidates",
    "ImageCandidates",
    "QueueParams",
    "RoundPlan",
    "ScoredImage",
    "busy_by_image",
    "forget_candidates",
    "image_candidates",
    "needed_versions",
    "plan_full",
    "plan_merged",
    "plan_queue",
    "prune_scores",
    "replace_scores",
    "write_candidates",
    "write_scores",
]
