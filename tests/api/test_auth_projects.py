from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conftest import Stack
from tests.utils import make_project, make_user, unique


def test_health_is_open_and_reports_each_part(stack: Stack) -> None:
    with stack.client() as c:
        r = c.get("/health")
    assert r.status_code == 200
    assert r.json() | {"version": "x"} == {
        "status": "ok",
        "database": "ok",
        "broker": "ok",
        "storage": "ok",
        "version": "x",
    }


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer as_"},
    ],
)
def test_missing_or_wrong_token_is_401_with_detail(stack: Stack, headers: dict[str, str]) -> None:
    with stack.client() as c:
        r = c.get("/projects", headers=headers)
    assert r.status_code == 401
    assert "token" in r.json()["detail"].lower()


def test_revoked_and_expired_tokens_are_refused(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    from activeseg.core.services import auth
    from activeseg.core.tables import User

    _, token = make_user(admin, "engineer")
    with stack.client(token) as c:
        assert c.get("/users/me").status_code == 200
        tokens = c.get("/tokens").json()["data"]
        assert c.delete(f"/tokens/{tokens[0]['id']}").status_code == 200
        r = c.get("/users/me")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]

    uid, _ = make_user(admin, "engineer")
    with stack.db.session() as s:  # type: ignore[attr-defined]
        _, expired = auth.create_token(s, s.get(User, uid), timedelta(seconds=-1))
    with stack.client(expired) as c:
        r = c.get("/users/me")
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_roles_and_project_membership(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    ann_id, ann = make_user(admin, "annotator")
    _, eng = make_user(admin, "engineer")
    _, other_eng = make_user(admin, "engineer")
    with stack.client(ann) as c:
        r = c.post(
            "/projects",
            json={"name": unique("x"), "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]},
        )
        assert r.status_code == 403 and "engineer" in r.json()["detail"]
    with stack.client(eng) as c:
        project = make_project(c)
        pid = project["id"]
    # Another engineer, not a member: the project does not exist for them.
    with stack.client(other_eng) as c:
        assert c.get(f"/projects/{pid}").status_code == 404
        assert pid not in [p["id"] for p in c.get("/projects").json()["data"]]
    with stack.client(ann) as c:
        assert c.get(f"/projects/{pid}").status_code == 404
    with stack.client(eng) as c:
        assert c.post(f"/projects/{pid}/members", json={"user_id": ann_id}).status_code == 204
    with stack.client(ann) as c:
        assert c.get(f"/projects/{pid}").status_code == 200
        assert c.patch(f"/projects/{pid}", json={"description": "x"}).status_code == 403
    # Only admins create users.
    with stack.client(eng) as c:
        assert c.post("/users", json={"name": unique("u"), "role": "admin"}).status_code == 403


def test_project_crud_and_settings_validation(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    project = make_project(admin, n_classes=3, region_kind="grid", region_size=8)
    pid = project["id"]
    assert project["settings"]["region_kind"] == "grid"
    assert project["settings"]["model"]["method"] == "mc_dropout"  # validated default
    assert admin.get(f"/projects/{pid}").json()["name"] == project["name"]

    r = admin.patch(
        f"/projects/{pid}", json={"settings": {"batch_size": 7, "model": {"mc_samples": 4}}}
    )
    assert r.status_code == 200, r.text
    s = r.json()["settings"]
    assert (s["batch_size"], s["model"]["mc_samples"], s["model"]["depth"], s["region_size"]) == (
        7,
        4,
        4,
        8,
    )

    r = admin.patch(f"/projects/{pid}", json={"settings": {"measure": "bogus"}})
    assert r.status_code == 422 and "bogus" in r.json()["detail"]
    r = admin.patch(
        f"/projects/{pid}",
        json={"settings": {"model": {"method": "single"}, "measure": "mutual_information"}},
    )
    assert r.status_code == 422 and "several members" in r.json()["detail"]
    assert admin.get(f"/projects/{pid}").json()["settings"]["batch_size"] == 7  # unchanged

    bad_classes = [
        [{"id": 0, "name": "a"}, {"id": 2, "name": "b"}],
        [{"id": 0, "name": "a"}, {"id": 1, "name": "a"}],
        [{"id": 0, "name": "a"}, {"id": 1, "name": "b", "colour": "red"}],
        [{"id": 0, "name": "a"}],
    ]
    for classes in bad_classes:
        r = admin.post("/projects", json={"name": unique("bad"), "classes": classes})
        assert r.status_code == 422, classes
        assert "detail" in r.json()
    r = admin.post("/projects", json={"name": project["name"], "classes": project["classes"]})
    assert r.status_code == 409
    assert admin.get("/projects/999999").status_code == 404
    r = admin.get("/projects", params={"limit": 0})
    assert r.status_code == 422
    r = admin.get("/projects", params={"offset": -1})
    assert r.status_code == 422
