"""Signed, expiring links over real HTTP, on SQLite and PostgreSQL: a link opens its resource
with no Authorization header; any change to it is 403; an expired link or one whose key is
revoked is 401; only readers of a resource get a link to it; lease payloads and the Label
Studio export carry links that work."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update

from activeseg.core.errors import Forbidden, Unauthorized
from activeseg.core.services import links
from activeseg.core.tables import LinkKey, Project, Task
from activeseg.integrations.label_studio import resolve_image
from tests.conftest import Stack
from tests.integrations.helpers import add_scored_model, hand_mask, put_mask
from tests.utils import (
    build_queue_inline,
    grid_project,
    image_bytes,
    make_project,
    make_user,
    upload,
)

H, W = 32, 32
MISMATCH = "this link's signature does not match"


@pytest.fixture
def world(stack: Stack, admin: httpx.Client) -> dict[str, Any]:
    """A project owned by an engineer, with an annotator member: two images (the first
    labelled by hand, both scored by a stand-in model); an outsider engineer of another
    project."""
    eng_id, eng = make_user(admin, "engineer")
    ann_id, ann = make_user(admin, "annotator")
    _, outsider = make_user(admin, "engineer")
    with stack.client(eng) as c:
        pid = grid_project(c)["id"]
        assert c.post(f"/projects/{pid}/members", json={"user_id": ann_id}).status_code == 204
        files = [("a.png", image_bytes(H, W, seed=501)), ("b.png", image_bytes(H, W, seed=502))]
        r = upload(c, pid, *files)
        assert r.status_code == 201, r.text
        ids = [d["image"]["id"] for d in r.json()["data"]]
        put_mask(c, ids[0], hand_mask(H, W, seed=3))
    with stack.client(outsider) as c:
        make_project(c)
    pred = np.zeros((H, W), np.uint8)
    pred[:, W // 2 :] = 2
    mv = add_scored_model(stack, pid, {i: pred for i in ids}, {i: 0.25 for i in ids})
    return {
        "pid": pid,
        "ids": ids,
        "files": [f[1] for f in files],
        "mv": mv,
        "eng": eng,
        "ann": ann,
        "outsider": outsider,
    }


def make_link(client: httpx.Client, path: str, ttl_s: int | None = 3600) -> dict[str, Any]:
    body: dict[str, Any] = {"path": path}
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    r = client.post("/links", json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def anonymous(stack: Stack) -> httpx.Client:
    client = stack.client()
    assert "authorization" not in client.headers
    return client


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def with_query(url: str, pairs: list[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(pairs)}"


def test_a_link_opens_without_a_header_and_serves_the_bearer_bytes(
    stack: Stack, world: dict[str, Any]
) -> None:
    image_id, original = world["ids"][0], world["files"][0]
    with stack.client(world["ann"]) as member:
        before = datetime.now(UTC)
        link = make_link(member, f"/images/{image_id}/file", ttl_s=3600)
        bearer = member.get(f"/images/{image_id}/file")
    assert bearer.status_code == 200 and bearer.content == original
    assert "access-control-allow-origin" not in bearer.headers  # a token's answer: unchanged
    assert link["url"] == stack.base_url + link["path"]
    assert link["path"].startswith(f"/images/{image_id}/file?exp=")
    expires = datetime.fromisoformat(link["expires_at"])
    assert before + timedelta(seconds=3599) <= expires
    assert expires <= datetime.now(UTC) + timedelta(seconds=3601)
    assert [k for k, _ in query_of(link["url"])] == ["exp", "kid", "sig"]
    assert dict(query_of(link["url"]))["exp"] == str(int(expires.timestamp()))

    with anonymous(stack) as c:
        r = c.get(link["url"])
    assert r.status_code == 200, r.text
    assert r.content == bearer.content == original
    assert r.headers["content-type"] == "image/png"
    assert r.headers["access-control-allow-origin"] == "*"
    cache = re.fullmatch(r"private, max-age=(\d+)", r.headers["cache-control"])
    assert cache is not None
    max_age = int(cache[1])
    left = (expires - datetime.now(UTC)).total_seconds()
    assert left - 5 <= max_age <= 3600  # as long as the link lives, no longer

    # The other signable image routes, with the parameters they take.
    with stack.client(world["ann"]) as member:
        mask = make_link(member, f"/images/{image_id}/mask?revision=1")
        heat = make_link(member, f"/images/{image_id}/uncertainty.png?measure=entropy&overlay=1")
        pred = make_link(member, f"/images/{image_id}/prediction.png?raw=true")
        want = {
            "mask": member.get(f"/images/{image_id}/mask", params={"revision": 1}).content,
            "heat": member.get(
                f"/images/{image_id}/uncertainty.png", params={"measure": "entropy", "overlay": 1}
            ).content,
            "pred": member.get(
                f"/images/{image_id}/prediction.png", params={"raw": "true"}
            ).content,
        }
    with anonymous(stack) as c:
        for name, made in (("mask", mask), ("heat", heat), ("pred", pred)):
            r = c.get(made["url"])
            assert r.status_code == 200, (name, r.text)
            assert r.content == want[name] and r.headers["access-control-allow-origin"] == "*"
            assert r.headers["cache-control"].startswith("private, max-age=")
        assert c.get(mask["url"]).headers["x-label-revision"] == "1"
    raw = np.asarray(Image.open(io.BytesIO(want["pred"])))
    assert raw[0, 0] == 0 and raw[0, W - 1] == 2  # the stand-in model's exact classes


def test_any_change_to_a_link_is_403(stack: Stack, world: dict[str, Any]) -> None:
    first, second = world["ids"]
    with stack.client(world["ann"]) as member:
        file_link = make_link(member, f"/images/{first}/file")["url"]
        mask_link = make_link(member, f"/images/{first}/mask")["url"]
        heat_link = make_link(member, f"/images/{first}/uncertainty.png?overlay=false")["url"]
    pairs = query_of(file_link)
    sig = dict(pairs)["sig"]
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    tampered = [
        with_query(file_link, [(k, flipped if k == "sig" else v) for k, v in pairs]),
        file_link.replace(f"/images/{first}/", f"/images/{second}/"),  # another image
        file_link.replace("/file?", "/mask?"),  # another route of the same image
        with_query(mask_link, [("revision", "1"), *query_of(mask_link)]),  # an added parameter
        heat_link.replace("overlay=false", "overlay=true"),  # a changed parameter
        with_query(heat_link, [(k, v) for k, v in query_of(heat_link) if k != "overlay"]),
        with_query(
            file_link,
            [(k, str(int(v) + 3600) if k == "exp" else v) for k, v in pairs],  # a later expiry
        ),
        with_query(file_link, [*pairs, ("sig", sig)]),  # a second signature
        with_query(file_link, [(k, v) for k, v in pairs if k != "exp"]),  # no expiry
        with_query(file_link, [(k, "x" if k == "kid" else v) for k, v in pairs]),
    ]
    with anonymous(stack) as c:
        for url in [file_link, mask_link, heat_link]:
            assert c.get(url).status_code == 200, url
        for url in tampered:
            r = c.get(url)
            assert r.status_code == 403, (url, r.status_code, r.text)
            assert r.json()["detail"].startswith(MISMATCH)
            assert "access-control-allow-origin" not in r.headers
    # A request with a signature is judged by it alone: a valid token does not rescue it.
    with stack.client(world["ann"]) as member:
        assert member.get(tampered[0]).status_code == 403
        assert member.get(file_link).status_code == 200


def test_expired_link_is_401_with_its_time(stack: Stack, world: dict[str, Any]) -> None:
    image_id = world["ids"][0]
    past = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    path = f"/images/{image_id}/file"
    with stack.db.session() as s:  # type: ignore[attr-defined]
        query = links.sign(s, path, {}, past)
    with anonymous(stack) as c:
        r = c.get(f"{path}?{query}")
    assert r.status_code == 401
    assert r.json()["detail"] == ("this link expired at 2024-01-02T03:04:05Z; ask for a new one")


def test_verify_with_an_injected_clock(stack: Stack, world: dict[str, Any]) -> None:
    """The service on its own: valid up to the second before ``exp``, 401 from ``exp`` on."""
    path = f"/images/{world['ids'][0]}/uncertainty.png"
    exp = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
    with stack.db.session() as s:  # type: ignore[attr-defined]
        query = links.sign(s, path, {"measure": "entropy"}, exp)
        key = links.signing_key(s)
        pairs = parse_qsl(query)
        # Known answer: HMAC-SHA256 over the documented canonical string, URL-safe base64.
        canonical = f"activeseg-link-v1\n{key.id}\n{path}\nmeasure=entropy\n{int(exp.timestamp())}"
        digest = hmac.new(bytes.fromhex(key.secret), canonical.encode(), hashlib.sha256).digest()
        assert dict(pairs)["sig"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        assert dict(pairs)["kid"] == str(key.id)
    with stack.db.read_session() as s:  # type: ignore[attr-defined]
        grant = links.verify(s, path, pairs, now=exp - timedelta(seconds=1))
        assert grant.expires_at == exp and grant.path == path and grant.key_id == key.id
        assert grant.seconds_left(exp - timedelta(seconds=90)) == 90
        with pytest.raises(Unauthorized, match="expired at 2030-06-01T12:00:00Z"):
            links.verify(s, path, pairs, now=exp)
        # The parameters' order in the URL does not matter; their values do.
        assert links.verify(s, path, list(reversed(pairs)), now=exp - timedelta(days=1))
        with pytest.raises(Forbidden):
            links.verify(s, path, [("measure", "margin"), *pairs[1:]], now=exp - timedelta(1))
        with pytest.raises(Forbidden):
            links.verify(s, path + "x", pairs, now=exp - timedelta(days=1))


def test_revoked_key_is_401_and_a_newer_key_keeps_working(
    stack: Stack, admin: httpx.Client, world: dict[str, Any]
) -> None:
    image_id = world["ids"][1]
    with stack.client(world["ann"]) as member:
        old = make_link(member, f"/images/{image_id}/file")["url"]
    old_kid = int(dict(query_of(old))["kid"])
    r = admin.post("/admin/link-keys/rotate")
    assert r.status_code == 201, r.text
    new_kid = r.json()["id"]
    assert new_kid > old_kid and r.json()["signing"] is True and "secret" not in r.json()
    with stack.client(world["ann"]) as member:
        new = make_link(member, f"/images/{image_id}/file")["url"]
    assert int(dict(query_of(new))["kid"]) == new_kid
    with anonymous(stack) as c:
        assert c.get(old).status_code == 200  # rotation alone keeps issued links working
        assert c.get(new).status_code == 200
        r = admin.delete(f"/admin/link-keys/{old_kid}")
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
        gone = c.get(old)  # at once: no cache between revocation and verification
        assert gone.status_code == 401
        assert (
            gone.json()["detail"] == "this link's signing key has been revoked; ask for a new one"
        )
        ok = c.get(new)
        assert ok.status_code == 200 and ok.content == world["files"][1]
        unknown = with_query(
            new, [(k, "2147483000" if k == "kid" else v) for k, v in query_of(new)]
        )
        assert c.get(unknown).status_code == 401
    listing = admin.get("/admin/link-keys")
    assert listing.status_code == 200
    rows = {k["id"]: k for k in listing.json()["data"]}
    assert rows[old_kid]["revoked_at"] is not None and rows[new_kid]["signing"] is True
    assert [k["id"] for k in listing.json()["data"] if k["signing"]] == [new_kid]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        secrets = list(s.scalars(select(LinkKey.secret)))
    assert secrets and not any(secret in listing.text for secret in secrets)
    assert admin.delete(f"/admin/link-keys/{old_kid}").status_code == 200  # idempotent
    assert admin.delete("/admin/link-keys/2147483000").status_code == 404
    with stack.client(world["eng"]) as eng:
        assert eng.get("/admin/link-keys").status_code == 403
        assert eng.post("/admin/link-keys/rotate").status_code == 403
        assert eng.delete(f"/admin/link-keys/{new_kid}").status_code == 403


def test_with_every_key_revoked_the_next_link_makes_a_new_key(
    stack: Stack, admin: httpx.Client, world: dict[str, Any]
) -> None:
    image_id = world["ids"][0]
    with stack.client(world["ann"]) as member:
        before = make_link(member, f"/images/{image_id}/file")["url"]
        for key in admin.get("/admin/link-keys").json()["data"]:
            assert admin.delete(f"/admin/link-keys/{key['id']}").status_code == 200
        assert all(k["revoked_at"] for k in admin.get("/admin/link-keys").json()["data"])
        after = make_link(member, f"/images/{image_id}/file")["url"]
    kids = [int(dict(query_of(u))["kid"]) for u in (before, after)]
    assert kids[1] > kids[0]
    [signing] = [k for k in admin.get("/admin/link-keys").json()["data"] if k["signing"]]
    assert signing["id"] == kids[1] and signing["revoked_at"] is None
    with anonymous(stack) as c:
        assert c.get(before).status_code == 401
        assert c.get(after).status_code == 200


def test_only_readers_get_a_link_and_only_signable_paths(
    stack: Stack, world: dict[str, Any]
) -> None:
    image_id, mv = world["ids"][0], world["mv"]
    with stack.client(world["outsider"]) as outsider:
        for path in [f"/images/{image_id}/file", f"/models/{mv}/report.html"]:
            r = outsider.post("/links", json={"path": path})
            assert r.status_code == 404, r.text  # as the routes answer outsiders
            assert outsider.get(path).status_code == 404
        assert outsider.post("/links", json={"path": "/images/2147483000/file"}).status_code == 404
    with stack.client(world["ann"]) as member:
        assert make_link(member, f"/models/{mv}/plots/reliability.png")["url"]
        for path in [
            "/images/1",
            f"/projects/{world['pid']}/export",
            "/images/1/file/../mask",
            "/images/01/file",
            "http://elsewhere.example/images/1/file",
            "/images/1/file#x",
            "/images/1/revisions",
            "/tasks/1/submit",
        ]:
            r = member.post("/links", json={"path": path})
            assert r.status_code == 422, (path, r.text)
            detail = r.json()["detail"]
            assert "/images/{id}/file" in detail and "/models/{id}/report.html" in detail, detail
        for path, word in [
            (f"/images/{image_id}/file?revision=1", "takes no parameters"),
            (f"/images/{image_id}/mask?sig=abc", "takes revision"),
            (f"/images/{image_id}/uncertainty.png?exp=1", "takes measure, overlay"),
        ]:
            r = member.post("/links", json={"path": path})
            assert r.status_code == 422 and word in r.json()["detail"], r.text
        for ttl in (59, 30 * 86400 + 1):
            r = member.post("/links", json={"path": f"/images/{image_id}/file", "ttl_s": ttl})
            assert r.status_code == 422, r.text
        # Without ttl_s: the settings' default (ACTIVESEG_LINK_TTL_S, 24 h here).
        made = make_link(member, f"/images/{image_id}/file", ttl_s=None)
        left = (datetime.fromisoformat(made["expires_at"]) - datetime.now(UTC)).total_seconds()
        assert stack.settings.link_ttl_s == 86400  # type: ignore[attr-defined]
        assert 86400 - 60 < left <= 86401  # whole seconds, rounded up


def test_no_signature_no_token_is_401_as_before(stack: Stack, world: dict[str, Any]) -> None:
    image_id = world["ids"][0]
    with stack.client(world["ann"]) as member:
        link = make_link(member, f"/images/{image_id}/file")["url"]
        mask_link = make_link(member, f"/images/{image_id}/mask")["url"]
    without_sig = with_query(link, [(k, v) for k, v in query_of(link) if k != "sig"])
    with anonymous(stack) as c:
        for url in [f"/images/{image_id}/file", f"/models/{world['mv']}/report.html", without_sig]:
            r = c.get(url)
            assert r.status_code == 401, url
            assert r.json()["detail"].startswith("missing API token")
        # Only the six GET routes accept a signature: it opens nothing else.
        assert c.get(f"/images/{image_id}?{urlsplit(link).query}").status_code == 401
        r = c.put(mask_link, files={"file": ("m.png", b"x")})  # only GET takes a link
        assert r.status_code == 401 and r.json()["detail"].startswith("missing API token")
    with anonymous(stack) as c:
        assert c.post("/links", json={"path": f"/images/{image_id}/file"}).status_code == 401


def test_lease_payload_links_open_without_a_token(stack: Stack, admin: httpx.Client) -> None:
    pid = grid_project(admin)["id"]
    data = image_bytes(32, 32, seed=77)
    image_id = upload(admin, pid, ("l.png", data)).json()["data"][0]["image"]["id"]
    build_queue_inline(stack, pid)  # random tasks (no model yet)...
    mv = add_scored_model(stack, pid, {image_id: np.ones((32, 32), np.uint8)}, {image_id: 0.5})
    with stack.db.session() as s:  # type: ignore[attr-defined]
        # ...as if they had been queued from the stand-in model's entropy scores
        s.execute(
            update(Task)
            .where(Task.project_id == pid)
            .values(model_version_id=mv, measure="entropy")
        )
    lease = admin.post(f"/projects/{pid}/tasks/next").json()
    assert lease["task"]["image_id"] == image_id
    assert lease["task"]["measure"] == "entropy"
    for key in ("image_url", "prediction_url", "uncertainty_url"):
        assert lease[key].startswith("/images/") and "&sig=" in lease[key], lease[key]
    assert dict(query_of(lease["uncertainty_url"]))["measure"] == "entropy"
    with anonymous(stack) as c:
        r = c.get(lease["image_url"])
        assert r.status_code == 200 and r.content == data
        for key in ("prediction_url", "uncertainty_url"):
            r = c.get(lease[key])
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", key
        # The annotator page sends its token with these URLs too: served the same.
        assert admin.get(lease["prediction_url"]).content == c.get(lease["prediction_url"]).content
    exp = int(dict(query_of(lease["image_url"]))["exp"])
    assert abs(exp - (time.time() + 86400)) < 120  # the settings' default life


def test_labelstudio_export_links_open_and_resolve(
    stack: Stack, admin: httpx.Client, world: dict[str, Any]
) -> None:
    pid = world["pid"]

    def export(**params: Any) -> httpx.Response:
        return admin.get(f"/projects/{pid}/export", params={"format": "labelstudio", **params})

    first = export()
    assert first.status_code == 200, first.text
    tasks = json.loads(first.content)
    by_sha = {t["data"]["activeseg_sha256"]: t for t in tasks}
    now = time.time()
    with anonymous(stack) as c, stack.db.read_session() as s:  # type: ignore[attr-defined]
        project = s.get(Project, pid)
        for image_id, original in zip(world["ids"], world["files"], strict=True):
            sha = hashlib.sha256(original).hexdigest()
            url = by_sha[sha]["data"]["image"]
            assert url.startswith(f"{stack.base_url}/images/{image_id}/file?")
            exp = int(dict(query_of(url))["exp"])
            assert exp % 86400 == 0  # a whole UTC day: the same bytes all day
            assert now + 30 * 86400 <= exp <= now + 31 * 86400
            r = c.get(url)
            assert r.status_code == 200 and r.content == original
            found = resolve_image(s, project, url)
            assert found is not None and found.id == image_id
    again = export()
    first_exp = dict(query_of(tasks[0]["data"]["image"]))["exp"]
    if dict(query_of(json.loads(again.content)[0]["data"]["image"]))["exp"] == first_exp:
        assert again.content == first.content  # same day, same key: the same bytes
    short = json.loads(export(link_ttl_days=2).content)[0]["data"]["image"]
    exp = int(dict(query_of(short))["exp"])
    assert exp % 86400 == 0 and time.time() + 2 * 86400 <= exp <= time.time() + 3 * 86400
    for bad in (0, 91):
        assert export(link_ttl_days=bad).status_code == 422


def test_the_signing_key_is_kept_a_second_and_dropped_at_once_on_rotation(
    stack: Stack, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every lease signs links, so a process reads the newest key at most every
    SIGNING_KEY_TTL_S; a key this process rotates or revokes is dropped at once."""
    db = stack.db
    monkeypatch.setattr(links, "SIGNING_KEY_TTL_S", 3600.0)
    with db.session() as s:  # type: ignore[attr-defined]
        links.signing_key(s)  # the first key is made here, and not kept (it could roll back)
    with db.session() as s:  # type: ignore[attr-defined]
        first = links.signing_key(s)  # read and kept
    with db.session() as s:  # type: ignore[attr-defined]
        behind = LinkKey(secret="ab" * 32)  # as another API process would make one
        s.add(behind)
        s.flush()
        behind_id = behind.id
    with db.session() as s:  # type: ignore[attr-defined]
        assert links.signing_key(s).id == first.id  # kept: not read again
    monkeypatch.setattr(links, "SIGNING_KEY_TTL_S", 0.0)
    with db.session() as s:  # type: ignore[attr-defined]
        assert links.signing_key(s) == links.SigningKey(behind_id, "ab" * 32)  # read again
    monkeypatch.setattr(links, "SIGNING_KEY_TTL_S", 3600.0)
    with db.session() as s:  # type: ignore[attr-defined]
        rotated = links.rotate(s).id
    with db.session() as s:  # type: ignore[attr-defined]
        assert links.signing_key(s).id == rotated  # this process rotated: at once
        links.revoke(s, rotated)
    with db.session() as s:  # type: ignore[attr-defined]
        assert links.signing_key(s).id == behind_id  # revoked here: at once
