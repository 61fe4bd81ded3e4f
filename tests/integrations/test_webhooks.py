"""Outgoing webhooks to a real HTTP receiver: signature, retry with backoff, delivery log,
and the events jobs send."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from activeseg.core.services.jobs import request_job
from activeseg.integrations import webhooks
from activeseg.jobs.deliver_webhook import deliver_webhook
from activeseg.jobs.registry import inline_dispatcher
from activeseg.jobs.runner import RetryLater, run_job
from tests.conftest import Stack
from tests.integrations.helpers import receiver
from tests.utils import image_bytes, make_project, make_user, upload


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "BACKOFF_S", 0.05)


def run_inline(stack: Stack, job_id: int) -> None:
    inline_dispatcher(stack.db, stack.store, stack.settings)(job_id)  # type: ignore[arg-type]


def register(admin, pid: int, url: str, events: list[str]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    r = admin.post(f"/projects/{pid}/webhooks", json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_register_list_delete_and_secret_shown_once(admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    hook = register(admin, pid, "http://127.0.0.1:9/x", ["model.trained", "job.failed"])
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["job.failed", "model.trained"]
    listed = admin.get(f"/projects/{pid}/webhooks").json()
    assert listed["count"] == 1 and "secret" not in listed["data"][0]
    assert "secret" not in admin.get(f"/projects/{pid}/webhooks/{hook['id']}").json()
    bad = admin.post(f"/projects/{pid}/webhooks", json={"url": "ftp://x", "events": ["job.failed"]})
    assert bad.status_code == 422
    bad = admin.post(f"/projects/{pid}/webhooks", json={"url": "http://x", "events": ["nope"]})
    assert bad.status_code == 422
    assert admin.delete(f"/projects/{pid}/webhooks/{hook['id']}").status_code == 204
    assert admin.get(f"/projects/{pid}/webhooks/{hook['id']}").status_code == 404


def test_annotators_cannot_manage_webhooks(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    uid, token = make_user(admin, "annotator")
    admin.post(f"/projects/{pid}/members", json={"user_id": uid})
    with stack.client(token) as ann:
        assert ann.get(f"/projects/{pid}/webhooks").status_code == 403
        r = ann.post(
            f"/projects/{pid}/webhooks", json={"url": "http://x", "events": ["job.failed"]}
        )
        assert r.status_code == 403


def test_signed_delivery_retried_after_a_500(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    with receiver([500]) as rec:
        hook = register(admin, pid, rec.url, ["job.failed"])
        r = admin.post(f"/projects/{pid}/webhooks/{hook['id']}/ping")
        assert r.status_code == 202, r.text
        delivery = r.json()
        run_inline(stack, delivery["job_id"])
        assert len(rec.requests) == 2  # a 500, then a 200
        for headers, body in rec.requests:
            expected = hmac.new(hook["secret"].encode(), body, hashlib.sha256).hexdigest()
            assert headers["x-activeseg-signature"] == f"sha256={expected}"
            assert headers["x-activeseg-event"] == "ping"
            assert headers["x-activeseg-delivery"] == delivery["uuid"]
        assert rec.requests[0][1] == rec.requests[1][1]  # the same bytes on every attempt
        sent = json.loads(rec.requests[0][1])
        assert sent["event"] == "ping" and sent["project_id"] == pid
        assert sent["delivery"] == delivery["uuid"]
    log = admin.get(f"/projects/{pid}/webhooks/{hook['id']}/deliveries").json()
    [row] = log["data"]
    assert row["state"] == "succeeded" and row["last_status"] == 200
    assert [a["status"] for a in row["attempts"]] == [500, 200]
    assert [a["attempt"] for a in row["attempts"]] == [1, 2]


def test_every_attempt_failing_fails_the_job_and_logs_each(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    hook = register(admin, pid, "http://127.0.0.1:1/refused", ["job.failed"])
    delivery = admin.post(f"/projects/{pid}/webhooks/{hook['id']}/ping").json()
    run_inline(stack, delivery["job_id"])
    job = admin.get(f"/jobs/{delivery['job_id']}").json()
    assert job["state"] == "failed" and "after 5 attempts" in job["error"]
    [row] = admin.get(f"/projects/{pid}/webhooks/{hook['id']}/deliveries").json()["data"]
    assert row["state"] == "failed" and len(row["attempts"]) == 5
    assert all(a["status"] is None and a["error"] for a in row["attempts"])
    # a failed delivery does not announce itself as a failed job (no loop)
    assert admin.get(f"/projects/{pid}/webhooks/{hook['id']}/deliveries").json()["count"] == 1


def test_jobs_send_job_failed_and_queue_refilled(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin, region_kind="grid", region_size=16, batch_size=2)["id"]
    upload(admin, pid, ("a.png", image_bytes(32, 32, seed=3)))
    with receiver() as rec:
        register(admin, pid, rec.url, ["job.failed", "queue.refilled"])
        other = register(admin, pid, rec.url, ["model.trained"])  # hears nothing here
        with stack.db.session() as s:  # type: ignore[attr-defined]
            failing, _ = request_job(s, project_id=pid, kind="score_pool", params={})
            queue, _ = request_job(s, project_id=pid, kind="build_queue", params={})
        run_inline(stack, failing.id)  # no model yet: fails
        run_inline(stack, queue.id)
        events = {h["x-activeseg-event"]: json.loads(b) for h, b in rec.requests}
        assert set(events) == {"job.failed", "queue.refilled"}
        assert events["job.failed"]["data"]["job_id"] == failing.id
        assert events["job.failed"]["data"]["kind"] == "score_pool"
        assert "no active model" in events["job.failed"]["data"]["error"]
        assert events["queue.refilled"]["data"] == {"round": 1, "tasks": 2}
        run_inline(stack, failing.id)  # redelivered: already failed, nothing sent twice
        assert len(rec.requests) == 2
    assert admin.get(f"/projects/{pid}/webhooks/{other['id']}/deliveries").json()["count"] == 0


def test_a_failed_attempt_ends_the_job_run_and_schedules_the_next_after_the_backoff(  # type: ignore[no-untyped-def]
    stack: Stack, admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run of the job makes one attempt: a failure with attempts left returns the job to
    ``queued`` at once and asks for a rerun after 1, 2, 4, 8 s (nothing sleeps); the fifth
    failure fails the job."""
    monkeypatch.setattr(webhooks, "BACKOFF_S", 1.0)  # the documented waits
    pid = make_project(admin)["id"]
    with receiver([500] * 5) as rec:
        hook = register(admin, pid, rec.url, ["job.failed"])
        delivery = admin.post(f"/projects/{pid}/webhooks/{hook['id']}/ping").json()
        job_id, countdowns = delivery["job_id"], []
        started = time.monotonic()
        for attempt in range(1, 5):
            with pytest.raises(RetryLater) as asked:
                run_job(
                    stack.db, stack.store, stack.settings, job_id, deliver_webhook, lambda _: True
                )  # type: ignore[arg-type]
            countdowns.append(asked.value.countdown_s)
            assert len(rec.requests) == attempt
            job = admin.get(f"/jobs/{job_id}").json()
            assert (
                job["state"] == "queued"
                and f"attempt {attempt} failed (HTTP 500)" in job["message"]
            )
            [row] = admin.get(f"/projects/{pid}/webhooks/{hook['id']}/deliveries").json()["data"]
            assert row["state"] == "retrying" and len(row["attempts"]) == attempt
        run_job(stack.db, stack.store, stack.settings, job_id, deliver_webhook, lambda _: True)  # type: ignore[arg-type]
        assert time.monotonic() - started < sum(countdowns)  # no run waited for the next
    assert countdowns == [1.0, 2.0, 4.0, 8.0]
    assert len(rec.requests) == 5
    job = admin.get(f"/jobs/{job_id}").json()
    assert job["state"] == "failed" and "after 5 attempts: HTTP 500" in job["error"]
    assert job["attempts"] == 5  # one run per attempt
    [row] = admin.get(f"/projects/{pid}/webhooks/{hook['id']}/deliveries").json()["data"]
    assert row["state"] == "failed" and [a["attempt"] for a in row["attempts"]] == [1, 2, 3, 4, 5]
