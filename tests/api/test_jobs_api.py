from __future__ import annotations

from tests.conftest import Stack
from tests.utils import make_project, make_user


def test_job_request_is_idempotent_and_visible(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    r = admin.post(f"/projects/{pid}/verify", json={"request_id": "abc"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "verify_storage" and job["state"] in ("queued", "running", "succeeded")
    again = admin.post(f"/projects/{pid}/verify", json={"request_id": "abc"}).json()
    assert again["id"] == job["id"]
    # An identical job not finished yet is reused even without a request id.
    same = admin.post(f"/projects/{pid}/verify", json={}).json()
    assert same["id"] == job["id"] or same["state"] == "queued"
    assert admin.get(f"/jobs/{job['id']}").json()["id"] == job["id"]
    listed = admin.get(f"/projects/{pid}/jobs").json()["data"]
    assert job["id"] in [j["id"] for j in listed]
    _, ann = make_user(admin, "annotator")
    with stack.client(ann) as c:
        assert c.post(f"/projects/{pid}/verify", json={}).status_code == 403
        assert c.get(f"/jobs/{job['id']}").status_code == 404
    r = admin.post(f"/jobs/{job['id']}/retry")
    assert r.status_code == 409 and "only a failed job" in r.json()["detail"]
