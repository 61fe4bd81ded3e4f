"""Scores that scale (issue 17): one score row per (version, image), chunk candidates whose
merge equals the queue computed over every score for a fixed seed, the full computation when
filtering exhausts them, idempotent re-scoring, and pruning that keeps what reports need.
On both databases."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
from sqlalchemy import func, select, update

from activeseg.core.services.projects import project_settings
from activeseg.core.services.scores import (
    ChunkCandidates,
    QueueParams,
    RoundPlan,
    ScoredImage,
    busy_by_image,
    forget_candidates,
    image_candidates,
    plan_full,
    plan_merged,
    plan_queue,
    write_candidates,
    write_scores,
)
from activeseg.core.tables import (
    Image,
    ImageRegionScores,
    ImageScore,
    Job,
    ModelState,
    ModelVersion,
    Project,
    ScoreCandidates,
    Task,
)
from activeseg.uncertainty.regions import grid_regions
from activeseg.uncertainty.selection import interleave
from tests.conftest import Stack
from tests.integrations.helpers import put_mask
from tests.utils import grid_project, image_bytes, run_job_inline, upload

SIDE, TILE = 32, 8  # 16 grid tiles per image, numbered row by row
N_REGIONS = (SIDE // TILE) ** 2


def _images(admin: httpx.Client, pid: int, n: int, seed: int = 0) -> list[int]:
    out: list[int] = []
    for start in range(0, n, 20):  # the upload's limit
        files = [
            (f"i{i}.png", image_bytes(SIDE, SIDE, seed=seed + i, rgb=False))
            for i in range(start, min(n, start + 20))
        ]
        r = upload(admin, pid, *files)
        assert r.status_code == 201, r.text
        out += [d["image"]["id"] for d in r.json()["data"]]
    return out


def _version(stack: Stack, pid: int, number: int, *, activate: bool, weights: bool) -> int:
    """A ready version: an untrained 1-channel UNet (depth 1) when ``weights``, else a row
    only (its scores are written by hand)."""
    from activeseg.models.checkpoint import state_to_bytes
    from activeseg.models.config import ModelConfig
    from activeseg.models.unet import UNet

    config = ModelConfig(in_channels=1, n_classes=3, method="single", depth=1, base_channels=4)
    keys = (
        [stack.store.put(state_to_bytes(UNet.from_config(config).state_dict()))] if weights else []
    )  # type: ignore[attr-defined]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        mv = ModelVersion(
            project_id=pid,
            version=number,
            state=ModelState.ready.value,
            config=config.model_dump(),
            member_keys=keys,
        )
        s.add(mv)
        s.flush()
        if activate:
            s.get(Project, pid).active_model_id = mv.id  # type: ignore[union-attr]
        return int(mv.id)


def _params(stack: Stack, pid: int, **changes: Any) -> QueueParams:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        project = s.get(Project, pid)
        assert project is not None
        params = QueueParams.from_settings(project_settings(project))
    return dataclasses.replace(params, **changes)


def _synthetic(image_id: int, rng: np.random.Generator) -> ScoredImage:
    """Scores with ties and zeros (0, 0.2, ..., 1.0), as score_pool stores them."""
    return ScoredImage.build(
        image_id,
        0,
        {"entropy": rng.integers(0, 6, N_REGIONS) / 5.0, "margin": rng.random(N_REGIONS)},
        rng.integers(0, 3, N_REGIONS),
        grid_regions(SIDE, SIDE, TILE).centroids,
        np.ones(N_REGIONS, np.bool_),
        ("grid", TILE, 0.0),
        means={"entropy": 0.5, "margin": 0.5},
        heatmap_key=NO_BLOB,
    )


NO_BLOB = "0" * 64
"""A heatmap key of the right shape that names no stored blob (the synthetic scores have none)."""


def _score_by_hand(
    stack: Stack, mv_id: int, params: QueueParams, items: list[ScoredImage], chunk: int
) -> None:
    """What score_pool writes, chunk by chunk: the rows, then the chunk's candidates."""
    db = stack.db  # type: ignore[attr-defined]
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        ids = [it.image_id for it in part]
        forget_candidates(db, mv_id, ids)
        write_scores(db, mv_id, part, "entropy")
        offers = ChunkCandidates.merge(params, [image_candidates(mv_id, params, it) for it in part])
        write_candidates(db, mv_id, ids, len(part), params, offers)


def _same(a: RoundPlan, b: RoundPlan) -> None:
    assert a.pairs() == b.pairs()
    assert a.selected["cls"].tolist() == b.selected["cls"].tolist()
    assert a.controls["cls"].tolist() == b.controls["cls"].tolist()


CASES = [
    {"strategy": "power", "per_image_cap": 2, "min_distance": None},
    {"strategy": "power", "per_image_cap": None, "min_distance": 9.0},
    {"strategy": "power", "per_image_cap": 1, "min_distance": 9.0, "beta": 3.0},
    {"strategy": "top_k", "per_image_cap": 2, "min_distance": None},  # ties across chunks
    {"strategy": "top_k", "per_image_cap": None, "min_distance": None},
    {"strategy": "softmax", "per_image_cap": 3, "min_distance": 12.0},
    {"strategy": "random", "per_image_cap": 1, "min_distance": None},
    {"strategy": "power", "per_image_cap": 2, "n_select": 25, "n_control": 12},
]


def test_merged_queue_equals_the_queue_over_every_score(stack: Stack, admin: httpx.Client) -> None:
    """The required equality: for a fixed seed, the round merged from the chunks' candidates
    is the round computed over every score row, selection and controls in order, for every
    mergeable strategy, with and without the per-image cap and the distance rule."""
    pid = grid_project(admin, region_size=TILE, batch_size=10, control_fraction=0.3)["id"]
    ids = _images(admin, pid, 30)
    rng = np.random.default_rng(17)
    for n, case in enumerate(CASES):
        mv_id = _version(stack, pid, n + 1, activate=False, weights=False)
        params = _params(stack, pid, seed=5 + n, **case)
        items = [_synthetic(i, rng) for i in ids]
        _score_by_hand(stack, mv_id, params, items, chunk=4)  # 8 chunks
        merged = plan_merged(stack.db, stack.store, mv_id, params, {})  # type: ignore[attr-defined]
        assert isinstance(merged, RoundPlan), (case, merged)
        full = plan_full(stack.db, stack.store, mv_id, params, {})  # type: ignore[attr-defined]
        assert merged.path == "merged" and full.path == "full" and merged.chunks == 8
        _same(merged, full)
        assert merged.selected.size == params.n_select, case
        assert merged.controls.size == params.n_control, case
        # The chunks kept far fewer entries than the pool holds.
        assert merged.candidates < full.candidates
        with stack.db.session() as s:  # type: ignore[attr-defined]
            rows = s.scalar(
                select(func.count())
                .select_from(ImageRegionScores)
                .where(ImageRegionScores.model_version_id == mv_id)
            )
        assert rows == len(ids)  # one row per image, two measures in it


def test_filtering_since_scoring_keeps_the_merge_exact(stack: Stack, admin: httpx.Client) -> None:
    """Regions busy (open tasks), labelled since scoring, an image moved out of the pool and
    one fully labelled: the merge recomputes or drops those images and still equals the
    computation over every row."""
    pid = grid_project(
        admin, region_size=TILE, batch_size=8, control_fraction=0.25, per_image_cap=2
    )["id"]
    ids = _images(admin, pid, 24, seed=40)
    mv_id = _version(stack, pid, 1, activate=True, weights=False)
    params = _params(stack, pid)
    rng = np.random.default_rng(3)
    _score_by_hand(stack, mv_id, params, [_synthetic(i, rng) for i in ids], chunk=5)
    first = plan_merged(stack.db, stack.store, mv_id, params, {})  # type: ignore[attr-defined]
    assert isinstance(first, RoundPlan)
    (s0, c0) = first.pairs()

    busy = busy_by_image([(s0[0][0], str(s0[0][1])), (c0[0][0], str(c0[0][1]))])
    used = {s0[0][0], c0[0][0]}
    relabel_image, relabel_region = next((i, r) for i, r in s0 + c0 if i not in used)
    mask = np.full((SIDE, SIDE), 255, np.uint8)
    y, x = TILE * (relabel_region // 4), TILE * (relabel_region % 4)
    mask[y : y + TILE, x : x + TILE] = 1  # that region fully labelled: no longer a candidate
    put_mask(admin, relabel_image, mask)
    used.add(relabel_image)
    # Prefer images the plan reached; any other pool image otherwise.
    moved = next(i for i in [i for i, _ in s0 + c0] + ids if i not in used)
    assert admin.patch(f"/images/{moved}", json={"split": "train"}).status_code == 200
    used.add(moved)
    full_label = next(i for i in [i for i, _ in s0 + c0] + ids if i not in used)
    put_mask(admin, full_label, np.zeros((SIDE, SIDE), np.uint8))

    merged = plan_merged(stack.db, stack.store, mv_id, params, busy)  # type: ignore[attr-defined]
    assert isinstance(merged, RoundPlan), merged
    full = plan_full(stack.db, stack.store, mv_id, params, busy)  # type: ignore[attr-defined]
    _same(merged, full)
    assert merged.recomputed >= 2  # the busy images and the relabelled one
    sel, ctl = merged.pairs()
    assert s0[0] not in sel and c0[0] not in ctl
    assert (relabel_image, relabel_region) not in sel + ctl
    assert moved not in {i for i, _ in sel + ctl}
    assert full_label not in {i for i, _ in sel + ctl}
    assert len(sel) == params.n_select and len(ctl) == params.n_control


def test_candidates_exhausted_by_filtering_fall_back_to_every_row(
    stack: Stack, admin: httpx.Client
) -> None:
    """One chunk keeps the 4 best regions (cap 1: images 0-3, score 0.95); when they are all
    busy the next best are images 4-7 (0.6), which the chunk cut: the merge cannot decide,
    the full computation does, and a build_queue job queues exactly that."""
    pid = grid_project(admin, region_size=TILE, batch_size=4, per_image_cap=1, strategy="top_k")[
        "id"
    ]
    ids = _images(admin, pid, 10, seed=70)
    mv_id = _version(stack, pid, 1, activate=True, weights=False)
    params = _params(stack, pid)
    items = []
    for n, image_id in enumerate(ids):
        scores = np.full(N_REGIONS, 0.5 if n < 4 else 0.1)
        scores[0] = 0.95 if n < 4 else (0.6 if n < 8 else 0.3)
        item = _synthetic(image_id, np.random.default_rng(n))
        item.scores[0] = scores.astype(np.float32)
        items.append(item)
    _score_by_hand(stack, mv_id, params, items, chunk=10)  # one chunk
    top = plan_merged(stack.db, stack.store, mv_id, params, {})  # type: ignore[attr-defined]
    assert isinstance(top, RoundPlan) and top.pairs()[0] == [(i, 0) for i in ids[:4]]

    busy = {i: {0} for i in ids[:4]}
    reason = plan_merged(stack.db, stack.store, mv_id, params, busy)  # type: ignore[attr-defined]
    assert reason == "filtering reached past a chunk's selection entries"
    plan = plan_queue(stack.db, stack.store, mv_id, params, busy)  # type: ignore[attr-defined]
    full = plan_full(stack.db, stack.store, mv_id, params, busy)  # type: ignore[attr-defined]
    assert plan.path == "full" and plan.reason == reason
    _same(plan, full)
    assert plan.pairs()[0] == [(i, 0) for i in ids[4:8]]

    # Through the job: the first round's tasks hold images 0-3, so the second falls back.
    job = run_job_inline(stack, pid, "build_queue")
    again = run_job_inline(stack, pid, "build_queue")
    with stack.db.session() as s:  # type: ignore[attr-defined]
        results = [s.get(Job, j).result for j in (job, again)]  # type: ignore[union-attr]
        second = s.scalars(
            select(Task)
            .where(Task.project_id == pid, Task.round_id.is_not(None))
            .order_by(Task.round_id, Task.priority.desc())
        ).all()
    assert results[0]["path"] == "merged" and results[1]["path"] == "full"
    assert results[1]["full_because"] == reason
    assert [(t.image_id, t.regions[0]) for t in second[4:]] == [(i, 0) for i in ids[4:8]]


def _rows(stack: Stack, mv_id: int) -> dict[str, Any]:
    """Every score row of a version, without ids and times."""
    with stack.db.session() as s:  # type: ignore[attr-defined]
        region = [
            (
                r.image_id,
                r.labels_revision,
                r.measures,
                r.scores,
                r.classes,
                r.centroids,
                r.open_regions,
            )
            for r in s.scalars(
                select(ImageRegionScores)
                .where(ImageRegionScores.model_version_id == mv_id)
                .order_by(ImageRegionScores.image_id)
            )
        ]
        image = s.execute(
            select(ImageScore.image_id, ImageScore.measure, ImageScore.heatmap_key)
            .where(ImageScore.model_version_id == mv_id)
            .order_by(ImageScore.image_id)
        ).all()
        chunks = [
            (c.first_image_id, c.last_image_id, c.n_images, c.params, c.selected, c.controls)
            for c in s.scalars(
                select(ScoreCandidates)
                .where(ScoreCandidates.model_version_id == mv_id)
                .order_by(ScoreCandidates.first_image_id)
            )
        ]
    return {"region": region, "image": [tuple(r) for r in image], "chunks": chunks}


def test_score_pool_chunks_merge_into_the_queue_and_a_redelivery_writes_once(
    stack: Stack, admin: httpx.Client
) -> None:
    """The real jobs: score_pool fans 12 images into 3 chunks of 4, each storing its
    candidates; a chunk delivered again writes the same rows once; build_queue merges the
    chunks into exactly the queue computed over every score, in the lease order
    (interleaving from default_rng([seed, round])), each task with its proposed class; a
    second round of the same version continues the draw without the first round's regions."""
    pid = grid_project(
        admin,
        region_size=TILE,
        batch_size=8,
        control_fraction=0.25,
        per_image_cap=2,
        measure="entropy",
        seed=23,
    )["id"]
    ids = _images(admin, pid, 12, seed=90)
    mv_id = _version(stack, pid, 1, activate=True, weights=True)
    run_job_inline(stack, pid, "score_pool", {"model_version_id": mv_id, "chunk_images": 4})
    before = _rows(stack, mv_id)
    assert len(before["region"]) == 12 and len(before["image"]) == 12  # 2 rows per image
    assert [(c[0], c[1], c[2]) for c in before["chunks"]] == [
        (ids[0], ids[3], 4),
        (ids[4], ids[7], 4),
        (ids[8], ids[11], 4),
    ]
    assert len(before["region"][0][2]) == 5  # five softmax measures in one row

    # A chunk delivered again (a new job for the same images): the same rows, once.
    run_job_inline(stack, pid, "score_pool", {"model_version_id": mv_id, "image_ids": ids[4:8]})
    assert _rows(stack, mv_id) == before

    params = _params(stack, pid)
    full = plan_full(stack.db, stack.store, mv_id, params, {})  # type: ignore[attr-defined]
    job = run_job_inline(stack, pid, "build_queue")
    with stack.db.session() as s:  # type: ignore[attr-defined]
        result = s.get(Job, job).result  # type: ignore[union-attr]
        tasks = s.scalars(
            select(Task).where(Task.project_id == pid).order_by(Task.priority.desc())
        ).all()
        leased = [(t.image_id, t.regions[0], t.control, t.proposed_classes) for t in tasks]
    assert result["path"] == "merged" and result["chunks"] == 3, result
    n_sel = full.selected.size
    order, is_control = interleave(
        np.arange(n_sel),
        np.arange(n_sel, n_sel + full.controls.size),
        seed=np.random.default_rng([23, 1]),
    )
    both = np.concatenate([full.selected, full.controls])[order]
    assert leased == [
        (int(e["image"]), int(e["region"]), bool(c), [int(e["cls"])])
        for e, c in zip(both, is_control, strict=True)
    ]
    assert sum(is_control) == 2 and len(leased) == 8

    # Round 2, same version: the open tasks are busy, the merge stays exact.
    with stack.db.session() as s:  # type: ignore[attr-defined]
        from activeseg.core.services.tasks import open_region_keys

        busy = busy_by_image(open_region_keys(s, pid, mv_id))
    full2 = plan_full(stack.db, stack.store, mv_id, params, busy)  # type: ignore[attr-defined]
    job2 = run_job_inline(stack, pid, "build_queue")
    with stack.db.session() as s:  # type: ignore[attr-defined]
        result2 = s.get(Job, job2).result  # type: ignore[union-attr]
        second = s.scalars(
            select(Task).where(Task.project_id == pid, Task.round_id != tasks[0].round_id)
        ).all()
    assert result2["path"] == "merged" and result2["round"] == 2, result2
    sel2, ctl2 = full2.pairs()
    assert {(t.image_id, t.regions[0]) for t in second} == set(sel2 + ctl2)
    assert not {(t.image_id, t.regions[0]) for t in second} & {(i, r) for i, r, _, _ in leased}


def test_pruning_keeps_what_reports_need(stack: Stack, admin: httpx.Client) -> None:
    """Pruning removes the scores (rows and heatmap blobs) of a version that is not active,
    queues no open task and is named by no unfinished job; its report, plots and checkpoints
    stay, its report is served the same, and evaluating it again needs no scores. Versions
    needed by an open task or a pending job keep theirs; a heatmap blob another version's
    row names stays."""
    pid = grid_project(admin, region_size=TILE, batch_size=4)["id"]
    ids = _images(admin, pid, 4, seed=120)
    [val] = _images(admin, pid, 1, seed=130)
    assert admin.patch(f"/images/{val}", json={"split": "val"}).status_code == 200
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[:, SIDE // 2 :] = 1
    put_mask(admin, val, mask)

    old = _version(stack, pid, 1, activate=True, weights=True)
    run_job_inline(stack, pid, "score_pool", {"model_version_id": old})
    run_job_inline(stack, pid, "evaluate", {"model_version_id": old})
    report = admin.get(f"/models/{old}/report")
    assert report.status_code == 200, report.text
    plot_name = sorted(report.json()["plots"])[0]
    plot = admin.get(f"/models/{old}/plots/{plot_name}.png")
    assert plot.status_code == 200
    with stack.db.session() as s:  # type: ignore[attr-defined]
        mv = s.get(ModelVersion, old)
        kept_blobs = [*mv.member_keys, *mv.report["plots"].values()]  # type: ignore[union-attr]
        old_heatmaps = set(
            s.scalars(select(ImageScore.heatmap_key).where(ImageScore.model_version_id == old))
        )
    assert len(old_heatmaps) == 4

    # Three more versions: one with an open (leased) task, one named by a pending job, one active.
    rng = np.random.default_rng(1)
    queuing = _version(stack, pid, 2, activate=False, weights=False)
    pending = _version(stack, pid, 3, activate=False, weights=False)
    params = _params(stack, pid)
    shared = next(iter(old_heatmaps))  # identical maps share one content-addressed blob
    for mv_id in (queuing, pending):
        items = [_synthetic(i, rng) for i in ids]
        items[0].heatmap_key = shared
        _score_by_hand(stack, mv_id, params, items, chunk=4)
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.add(
            Task(
                project_id=pid,
                image_id=ids[0],
                regions=[0],
                region_key="0",
                region_kind="grid",
                region_size=TILE,
                model_version_id=queuing,
                measure="entropy",
                priority=0.0,
                # leased: a queued task of another version turns stale at the next build
                state="leased",
                lease_expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
        )
        s.add(Job(project_id=pid, kind="evaluate", params={"model_version_id": pending}))
    new = _version(stack, pid, 4, activate=True, weights=True)
    run_job_inline(stack, pid, "score_pool", {"model_version_id": new})
    job = run_job_inline(stack, pid, "build_queue")  # prunes at its end

    with stack.db.session() as s:  # type: ignore[attr-defined]
        pruned = s.get(Job, job).result["pruned"]  # type: ignore[union-attr]

        def rows(mv_id: int) -> int:
            return sum(
                int(
                    s.scalar(select(func.count()).select_from(t).where(t.model_version_id == mv_id))
                    or 0
                )
                for t in (ImageRegionScores, ImageScore, ScoreCandidates)
            )

        counts = {mv_id: rows(mv_id) for mv_id in (old, queuing, pending, new)}
    assert pruned == {"versions": 1, "rows": 4 + 4 + 1, "blobs": 3}, pruned
    assert counts == {old: 0, queuing: 4 + 4 + 1, pending: 4 + 4 + 1, new: 4 + 4 + 1}
    store = stack.store  # type: ignore[attr-defined]
    assert [store.exists(k) for k in sorted(old_heatmaps - {shared})] == [False] * 3
    assert store.exists(shared)
    assert all(store.exists(k) for k in kept_blobs)
    again = admin.get(f"/models/{old}/report")
    assert again.status_code == 200

    def stored(body: dict[str, Any]) -> dict[str, Any]:  # "rounds" is read live
        return {k: v for k, v in body.items() if k != "rounds"}

    assert stored(again.json()) == stored(report.json())
    assert admin.get(f"/models/{old}/plots/{plot_name}.png").content == plot.content
    assert admin.get(f"/models/{old}/report.html").status_code == 200
    # Evaluating the pruned version again reads its checkpoints, not its scores.
    run_job_inline(stack, pid, "evaluate", {"model_version_id": old})
    recomputed = admin.get(f"/models/{old}/report").json()
    assert recomputed["calibration"] == report.json()["calibration"]

    # Once the task is done and the job has finished, the periodic sweep prunes them too.
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.execute(update(Task).where(Task.model_version_id == queuing).values(state="submitted"))
        s.execute(
            update(Job).where(Job.kind == "evaluate", Job.state == "pending").values(state="failed")
        )
    swept = run_job_inline(stack, None, "sweep_orphan_blobs", {"grace_s": 3600})  # type: ignore[arg-type]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        # (every project's unneeded versions: the count includes other tests' projects)
        assert s.get(Job, swept).result["pruned_scores"]["versions"] >= 2  # type: ignore[union-attr]
        left = {
            int(v)
            for v in s.scalars(
                select(ImageRegionScores.model_version_id)
                .join(Image, Image.id == ImageRegionScores.image_id)
                .where(Image.project_id == pid)
                .distinct()
            )
        }
    assert left == {new}
    assert store.exists(shared) == (shared in _heatmaps(stack, new))


def _heatmaps(stack: Stack, mv_id: int) -> set[str]:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        return set(
            s.scalars(select(ImageScore.heatmap_key).where(ImageScore.model_version_id == mv_id))
        )
