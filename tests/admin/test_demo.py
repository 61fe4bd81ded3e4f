"""The demo of `activeseg serve`: a model, its proposals and its heatmaps soon after first start.

A real serve on a fresh embedded data folder, polled over HTTP: the API answers before the
model exists (the first retrain runs in the worker, not before serving); then the project gets
an active model version and a queue of its proposals, and the demo annotator leases a task that
carries the model's proposed classes and an uncertainty heatmap.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from activeseg.admin.demo import DEMO_FIRST_MODEL_S
from activeseg.core.tables import Split
from activeseg.datasets.importer import splits_for
from tests.admin.test_serve_signals import Serve, demo_ids, serves, start

__all__ = ["serves"]  # the fixture, used by name

SLACK = 10
"""The bound is ``SLACK`` times the time serve states: the suite runs on 2 cores that other
test sessions share, and the tests cap torch at one thread."""


def test_train_images_take_slots_after_test_and_val_and_change_no_other_split() -> None:
    before = splits_for(80, 0.1, 0.1, seed=0)
    after = splits_for(80, 0.1, 0.1, seed=0, train_fraction=0.2)
    assert [after.count(split) for split in Split] == [48, 16, 8, 8]  # pool, train, val, test
    # Only pool images become train images: val and test stay where they were.
    assert {(b, a) for b, a in zip(before, after, strict=True) if b != a} == {
        (Split.pool, Split.train)
    }
    with pytest.raises(ValueError, match=r"test \(8\) \+ val \(8\) \+ train \(72\)"):
        splits_for(80, 0.1, 0.1, seed=0, train_fraction=0.9)


def test_the_demo_shows_a_model_and_its_proposals_soon_after_first_start(
    serves: list[Serve], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    serve = start(serves, tmp_path / "data")
    serve.wait_healthy()
    with serve.admin() as admin:
        project_id, job_id = demo_ids(admin)
        # The API answers before the model exists: the first retrain runs in the worker.
        assert admin.get(f"/projects/{project_id}").json()["active_model_id"] is None
        train = admin.get(f"/projects/{project_id}/images", params={"split": "train"}).json()
        assert train["count"] == 16
        assert {im["labelled_fraction"] for im in train["data"]} == {1.0}
        bound = SLACK * DEMO_FIRST_MODEL_S
        while True:
            model_id = admin.get(f"/projects/{project_id}").json()["active_model_id"]
            queued = admin.get(f"/projects/{project_id}/queue").json()["queued"]
            if model_id is not None and queued > 0:
                break
            job = admin.get(f"/jobs/{job_id}").json()
            assert job["state"] != "failed", job
            assert time.monotonic() - started < bound, f"no model and queue after {bound} s"
            time.sleep(1)
        elapsed = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\ndemo: model and queue {elapsed:.0f} s after start (stated {DEMO_FIRST_MODEL_S} s)"
        )
    assert f"about {DEMO_FIRST_MODEL_S} s on 2 cores" in serve.output()

    token = (serve.data_dir / "demo-annotator-token").read_text().strip()
    with httpx.Client(
        base_url=serve.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as annotator:
        lease = annotator.post(f"/projects/{project_id}/tasks/next")
        assert lease.status_code == 200, lease.text
        body = lease.json()
        assert body["model_version_id"] == model_id
        assert body["proposed_classes"], body
        heatmap = annotator.get(body["uncertainty_url"])
        assert heatmap.status_code == 200
        assert heatmap.headers["content-type"] == "image/png"
    assert serve.stop(signal.SIGTERM) == 0
