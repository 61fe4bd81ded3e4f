"""Rounds keep what the selection decided: the lease order is the sampled order, controls are
hidden in it, every draw follows the project's seed, answers record their cost and the
model's wrong pixels, and GET /projects/{id}/rounds compares the queue with its controls.
Over real HTTP on both databases."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from activeseg.core.services.pool import selection_class_counts
from activeseg.core.services.scores import ScoredImage
from activeseg.core.tables import ImageRegionScores, RegionSet, Task
from activeseg.uncertainty.control import compare_error_rates
from activeseg.uncertainty.pooling import class_weights_from_labels
from activeseg.uncertainty.regions import grid_regions
from activeseg.uncertainty.selection import (
    draw_controls,
    hashed_gumbel,
    interleave,
    select_regions,
)
from tests.conftest import Stack
from tests.integrations.helpers import add_scored_model, put_mask
from tests.utils import build_queue_inline, grid_project, image_bytes, png_bytes, upload

SIDE, TILE = 32, 16  # 4 grid tiles per image, numbered row by row


def _images(admin: Any, pid: int, n: int, split: str = "pool", seed: int = 0) -> list[int]:
    files = [(f"{split}{i}.png", image_bytes(SIDE, SIDE, seed=seed + i)) for i in range(n)]
    r = upload(admin, pid, *files, split=split)
    assert r.status_code == 201, r.text
    return [d["image"]["id"] for d in r.json()["data"]]


def _lease_all(stack: Stack, pid: int) -> list[dict[str, Any]]:
    leased = []
    with stack.client(stack.admin_token) as c:
        while (r := c.post(f"/projects/{pid}/tasks/next")).status_code == 200:
            leased.append(r.json()["task"])
        assert r.status_code == 204, r.text
    return leased


def _scores(n_images: int) -> list[list[float]]:
    return [[0.05 + 0.9 * ((7 * i + 3 * r) % 11) / 10 for r in range(4)] for i in range(n_images)]


def _scored_model(
    stack: Stack, pid: int, ids: list[int], predictions: dict[int, np.ndarray]
) -> int:
    """A scored model version: ``_scores`` as its stored entropy per grid tile (one
    ``image_region_scores`` row per image, no chunk candidates: build_queue computes the
    round from the rows)."""
    mv_id = add_scored_model(stack, pid, predictions, {i: 0.5 for i in ids})
    centroids = grid_regions(SIDE, SIDE, TILE).centroids
    with stack.db.session() as s:  # type: ignore[attr-defined]
        for image_id, values in zip(ids, _scores(len(ids)), strict=True):
            item = ScoredImage.build(
                image_id,
                0,
                {"entropy": np.asarray(values)},
                np.zeros(4, np.int16),
                centroids,
                np.ones(4, np.bool_),
                ("grid", TILE, 0.0),
            )
            s.add(ImageRegionScores(**item.row(mv_id)))
    return mv_id


def test_lease_order_is_the_sampled_order_with_hidden_controls(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = grid_project(admin, batch_size=8, control_fraction=0.5, seed=11)["id"]
    ids = _images(admin, pid, 3)
    zeros = {i: np.zeros((SIDE, SIDE), np.uint8) for i in ids}
    mv_id = _scored_model(stack, pid, ids, zeros)
    build_queue_inline(stack, pid)

    # The same draws, by hand: candidates image by image, region by region (the scores as
    # stored, float32); the selection's Gumbel noise and the control draw's are hashed from
    # (seed, model version, image, region), streams 0 and 1; the controls' places come from
    # default_rng([seed, round number]).
    cand = [(i, r) for i in ids for r in range(4)]
    scores = np.asarray([v for row in _scores(3) for v in row], np.float32).astype(np.float64)
    image_index = np.repeat(np.arange(3), 4)
    image_ids, regions = np.repeat(ids, 4), np.tile(np.arange(4), 3)
    noise = hashed_gumbel(11, mv_id, image_ids, regions, 0)
    picked = select_regions(scores, image_index, 4, strategy="power", noise=noise)
    draw = hashed_gumbel(11, mv_id, image_ids, regions, 1)
    controls = draw_controls(scores, image_index, picked, 4, noise=draw)
    order, is_control = interleave(picked, controls, seed=np.random.default_rng([11, 1]))
    expected = [cand[k] for k in order.tolist()]
    top_k = np.argsort(-scores, kind="stable")[:4]
    assert picked.tolist() != top_k.tolist()  # this draw is not the top-k, and it is kept

    leased = _lease_all(stack, pid)
    assert [(t["image_id"], t["regions"][0]) for t in leased] == expected
    assert all("control" not in t for t in leased)  # annotators cannot tell them apart
    with stack.db.session() as s:  # type: ignore[attr-defined]
        flags = {t.id: t.control for t in s.scalars(select(Task).where(Task.project_id == pid))}
    assert [flags[t["id"]] for t in leased] == is_control.tolist()
    assert sum(is_control) == 4


def test_day_one_queue_follows_the_project_seed(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    orders = {}
    for seed in (0, 7):
        pid = grid_project(admin, batch_size=8, seed=seed)["id"]
        ids = _images(admin, pid, 3, seed=100)
        job_id = build_queue_inline(stack, pid)
        rng = np.random.default_rng([seed, 1])
        picked = select_regions(np.ones(12), np.repeat(np.arange(3), 4), 8, "random", seed=rng)
        cand = [(i, r) for i in ids for r in range(4)]
        leased = _lease_all(stack, pid)
        assert [(t["image_id"], t["regions"][0]) for t in leased] == [cand[k] for k in picked]
        orders[seed] = [(ids.index(t["image_id"]), t["regions"][0]) for t in leased]
        with stack.client(stack.admin_token) as c:
            result = c.get(f"/jobs/{job_id}").json()["result"]
        assert result["controls"] == 0 and result["seed"] == seed  # no controls on day one
    assert orders[0] != orders[7]  # job ids are alike across services; seeds are not


def test_answers_record_cost_and_errors_and_rounds_compare(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = grid_project(admin, batch_size=12, control_fraction=0.5, per_image_cap=None)["id"]
    ids = _images(admin, pid, 3)
    # The model predicts class 0 on image 0, 1 on image 1, and 0 left / 1 right on image 2.
    predictions = {
        ids[0]: np.zeros((SIDE, SIDE), np.uint8),
        ids[1]: np.ones((SIDE, SIDE), np.uint8),
        ids[2]: np.repeat([[0] * TILE + [1] * TILE], SIDE, axis=0).astype(np.uint8),
    }
    _scored_model(stack, pid, ids, predictions)
    # A held-out image whose mask makes one tile impure: 64 of tile 0's 256 pixels are 1.
    [val_id] = _images(admin, pid, 1, split="val", seed=50)
    val_mask = np.zeros((SIDE, SIDE), np.uint8)
    val_mask[:8, :8] = 1
    put_mask(admin, val_id, val_mask)
    build_queue_inline(stack, pid)

    expected_wrong: dict[int, int] = {}
    with stack.client(stack.admin_token) as c:
        for n in range(12):
            task = c.post(f"/projects/{pid}/tasks/next").json()["task"]
            region = task["regions"][0]
            y0, x0 = TILE * (region // 2), TILE * (region % 2)
            pred = predictions[task["image_id"]][y0 : y0 + TILE, x0 : x0 + TILE]
            if n == 0:  # a patch: two rectangles of class 1 -> 4 + 4 clicks, 2 * 32 pixels
                patch = np.full((TILE, TILE), 255, np.uint8)
                patch[1:3, 1:16] = 1
                patch[8:10, 0:16] = 1
                body: dict[str, Any] = {"patch_png": base64.b64encode(png_bytes(patch)).decode()}
                expected_wrong[task["id"]] = int(((patch == 1) & (pred != 1)).sum())
            else:  # one class per region: every pixel labelled 1
                body = {"classes": {str(region): 1}}
                expected_wrong[task["id"]] = int((pred != 1).sum())
            r = c.post(f"/tasks/{task['id']}/submit", json=body)
            assert r.status_code == 201, r.text
        rounds = c.get(f"/projects/{pid}/rounds")
        assert rounds.status_code == 200, rounds.text
        report = rounds.json()

    with stack.db.session() as s:  # type: ignore[attr-defined]
        rows = list(
            s.scalars(select(Task).where(Task.project_id == pid).order_by(Task.priority.desc()))
        )
        first = rows[0]
        assert (first.answered_pixels, first.clicks) == (2 * 15 + 2 * 16, 8)
        for t in rows[1:]:
            assert (t.answered_pixels, t.clicks) == (TILE * TILE, 1)
        assert {t.id: t.model_wrong_pixels for t in rows} == expected_wrong
        by_id = sorted(rows, key=lambda t: t.id)  # the service's order
        sel = [t for t in by_id if not t.control]
        ctl = [t for t in by_id if t.control]

    assert report["count"] == 1
    [rnd] = report["data"]
    assert rnd["tasks"] == {"selected": 6, "control": 6}
    assert rnd["answered"] == {"selected": 6, "control": 6}
    assert rnd["labelled_pixels"] == sum(t.answered_pixels or 0 for t in rows)
    assert rnd["clicks"] == 8 + 11
    want = compare_error_rates(
        [t.model_wrong_pixels for t in sel],
        [t.answered_pixels for t in sel],
        [t.model_wrong_pixels for t in ctl],
        [t.answered_pixels for t in ctl],
        seed=1,
    ).as_dict()
    verdict = want.pop("verdict")
    assert rnd["comparison"].pop("verdict") == verdict, (rnd["comparison"], want)
    assert rnd["comparison"] == pytest.approx(want)
    assert report["cumulative"]["tasks"] == rnd["tasks"]
    assert report["cumulative"]["clicks"] == rnd["clicks"]
    purity = report["region_purity"]
    assert purity["images"] == 1 and purity["pixels"] == SIDE * SIDE
    assert purity["purity"] == pytest.approx((192 + 3 * 256) / 1024)  # 0.9375, by hand


def test_class_balanced_weights_ignore_val_and_test_masks(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = grid_project(admin, pooling="class_balanced")["id"]
    masks = {
        "pool": np.zeros((SIDE, SIDE), np.uint8),
        "val": np.ones((SIDE, SIDE), np.uint8),
        "test": np.full((SIDE, SIDE), 2, np.uint8),
    }
    masks["pool"][:8, :] = 1  # 768 pixels of class 0, 256 of class 1
    for n, (split, mask) in enumerate(masks.items()):
        [image_id] = _images(admin, pid, 1, split=split, seed=200 + n)
        put_mask(admin, image_id, mask)
    counts = selection_class_counts(stack.db, stack.store, pid, 3)  # type: ignore[attr-defined]
    assert counts.tolist() == [768, 256, 0]
    leaked = counts + np.array([0, 1024, 1024])
    assert not np.allclose(class_weights_from_labels(counts), class_weights_from_labels(leaked))


def test_slic_sigma_names_the_region_map_and_odd_counts_are_reported(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    # On 32x32 noise SLIC without smoothing collapses to 6 regions where size 4 implies 64;
    # with sigma 1 it makes 60.
    settings = {"region_kind": "superpixel", "region_size": 4, "slic_sigma": 0.0}
    pid = grid_project(admin, batch_size=2, **settings)["id"]
    noise = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE)).astype(np.uint8)
    r = upload(admin, pid, ("noise.png", png_bytes(noise)))
    assert r.status_code == 201, r.text
    image_id = r.json()["data"][0]["image"]["id"]
    first = build_queue_inline(stack, pid)
    patched = admin.patch(f"/projects/{pid}", json={"settings": {"slic_sigma": 1.0}})
    assert patched.status_code == 200, patched.text
    second = build_queue_inline(stack, pid)

    results = [admin.get(f"/jobs/{j}").json()["result"] for j in (first, second)]
    assert results[0]["region_warnings_total"] == 1
    assert (
        "has 6 superpixel regions where region_size 4 implies about 64"
        in (results[0]["region_warnings"][0])
    )
    assert "region_warnings" not in results[1]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        maps = s.execute(
            select(RegionSet.sigma, RegionSet.n_regions)
            .where(RegionSet.image_id == image_id)
            .order_by(RegionSet.sigma)
        ).all()
        sigmas = {t.region_sigma for t in s.scalars(select(Task).where(Task.project_id == pid))}
    assert [tuple(m) for m in maps] == [(0.0, 6), (1.0, 60)]
    assert sigmas == {0.0, 1.0}  # each task keeps the map it was queued on
