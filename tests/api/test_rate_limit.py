"""Per-token rate limits over real HTTP: the 6th task request of a token within a minute is
refused 429 with Retry-After while other tokens carry on; uploads likewise, but counted in
files (a request of many files is let in on credit and overdraws the bucket); 0 turns it off.

Two servers of their own (the shared ``stack`` runs without limits), each on its own SQLite
database: limits of 5 per minute, and limits of 0. The rate limiters' clock is moved by hand,
so Retry-After and the refill are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from activeseg.api.ratelimit import LIMITED_ROUTES, FileCounter, RateLimiter, TokenBuckets
from activeseg.core.services.auth import hash_token
from tests.conftest import Stack, running_stack, stack_env
from tests.utils import build_queue_inline, image_bytes, make_project, make_user, png_bytes, upload

LIMIT = 5
# (what the 429 says is limited, the setting's name part)
TASKS = "task requests (lease, heartbeat, release, skip, submit)", "TASKS"
UPLOADS = "uploaded files (images, masks, label imports)", "UPLOADS"


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Servers:
    on: Stack  # limits of LIMIT per minute
    off: Stack  # limits of 0
    clock: Clock  # the time every rate limiter of this module reads


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    clock = Clock()
    with pytest.MonkeyPatch.context() as patch, ExitStack() as running:
        patch.setattr(RateLimiter, "clock", staticmethod(clock))
        on, off = (
            running.enter_context(
                running_stack(
                    "sqlite",
                    {
                        **stack_env("sqlite", tmp_path_factory.mktemp(f"ratelimit{limit}")),
                        "ACTIVESEG_RATE_LIMIT_TASKS_PER_MINUTE": str(limit),
                        "ACTIVESEG_RATE_LIMIT_UPLOADS_PER_MINUTE": str(limit),
                    },
                )
            )
            for limit in (LIMIT, 0)
        )
        yield Servers(on, off, clock)


def _queue_with_members(stack: Stack, n_members: int) -> tuple[int, list[str], list[int]]:
    """A project with 6 queued tasks (3 images of 4 grid tiles, batch 6), ``n_members``
    annotator tokens, and the image ids. Uses the admin token's upload budget once."""
    with stack.client(stack.admin_token) as admin:
        pid = make_project(
            admin, region_kind="grid", region_size=16, batch_size=6, per_image_cap=None
        )["id"]
        r = upload(admin, pid, *[(f"{i}.png", image_bytes(32, 32, seed=70 + i)) for i in range(3)])
        assert r.status_code == 201, r.text
        image_ids = [d["image"]["id"] for d in r.json()["data"]]
        tokens = []
        for _ in range(n_members):
            uid, token = make_user(admin, "annotator")
            assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
            tokens.append(token)
    build_queue_inline(stack, pid)
    return pid, tokens, image_ids


def _assert_refused(r: httpx.Response, limit: tuple[str, str], retry_after: int) -> None:
    what, kind = limit
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == str(retry_after)
    assert r.json() == {
        "detail": f"rate limit exceeded: at most {LIMIT} {what} per minute per API token "
        f"(ACTIVESEG_RATE_LIMIT_{kind}_PER_MINUTE); retry after {retry_after} s"
    }


def test_sixth_task_request_of_a_token_gets_429_and_other_tokens_carry_on(
    servers: Servers,
) -> None:
    stack, clock = servers.on, servers.clock
    pid, (token_a, token_b), _ = _queue_with_members(stack, 2)
    with stack.client(token_a) as a, stack.client(token_b) as b:
        leased = []
        for _ in range(LIMIT):
            r = a.post(f"/projects/{pid}/tasks/next")
            assert r.status_code == 200, r.text
            leased.append(r.json()["task"]["id"])
        # Bucket empty, clock frozen: the next request is 60/5 = 12 s away.
        _assert_refused(a.post(f"/projects/{pid}/tasks/next"), TASKS, 12)
        # The refused lease leased nothing: B gets the sixth and last task, then 204.
        r = b.post(f"/projects/{pid}/tasks/next")
        assert r.status_code == 200 and r.json()["task"]["id"] not in leased
        assert b.post(f"/projects/{pid}/tasks/next").status_code == 204
        # Heartbeats share the bucket of the task routes.
        _assert_refused(a.post(f"/tasks/{leased[0]}/heartbeat"), TASKS, 12)
        clock.now += 6.0  # half a request refilled
        _assert_refused(a.post(f"/tasks/{leased[0]}/heartbeat"), TASKS, 6)
        clock.now += 6.0  # one whole request
        assert a.post(f"/tasks/{leased[0]}/heartbeat").status_code == 200
        assert a.post(f"/tasks/{leased[1]}/release").status_code == 429
        # Not limited: other routes, and requests without a token (the route answers 401).
        assert a.get(f"/tasks/{leased[0]}").status_code == 200
        assert a.get(f"/projects/{pid}/queue").json()["leased"] == 6
    with stack.client() as anonymous:
        for _ in range(LIMIT + 2):
            assert anonymous.post(f"/projects/{pid}/tasks/next").status_code == 401


def test_uploads_masks_and_imports_share_a_limit_of_their_own(servers: Servers) -> None:
    stack = servers.on
    with stack.client(stack.admin_token) as admin:
        pid = make_project(admin)["id"]
        e_id, token_e = make_user(admin, "engineer")
        f_id, token_f = make_user(admin, "engineer")
        for uid in (e_id, f_id):
            assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
    with stack.client(token_e) as e, stack.client(token_f) as f:
        statuses = []
        for i in range(LIMIT - 1):
            statuses.append(upload(e, pid, (f"{i}.png", image_bytes(8, 8, seed=90 + i))))
        image_id = statuses[0].json()["data"][0]["image"]["id"]
        mask = png_bytes(np.zeros((8, 8), np.uint8))
        statuses.append(e.put(f"/images/{image_id}/mask", files={"file": ("m.png", mask)}))
        assert [r.status_code for r in statuses] == [201] * LIMIT
        _assert_refused(
            e.post(f"/projects/{pid}/import", params={"format": "png"}, files={"file": ("x", b"")}),
            UPLOADS,
            12,
        )
        _assert_refused(
            e.put(f"/images/{image_id}/mask", files={"file": ("m.png", mask)}), UPLOADS, 12
        )
        _assert_refused(upload(e, pid, ("late.png", image_bytes(8, 8, seed=99))), UPLOADS, 12)
        # The task routes keep their own bucket: E may still ask for work (empty queue: 204).
        assert e.post(f"/projects/{pid}/tasks/next").status_code == 204
        # Another token uploads; the body-size limit still answers 413 before the route.
        assert upload(f, pid, ("f.png", image_bytes(8, 8, seed=98))).status_code == 201
        big = f.post(
            f"/projects/{pid}/images",
            content=b"x" * (4 * 1024 * 1024),
            headers={"content-type": "application/octet-stream"},
        )
        assert big.status_code == 413 and "ACTIVESEG_MAX_UPLOAD_BYTES" in big.json()["detail"]


def test_limits_of_zero_turn_limiting_off(servers: Servers) -> None:
    stack = servers.off
    pid, (token,), image_ids = _queue_with_members(stack, 1)
    with stack.client(token) as a:
        codes = [a.post(f"/projects/{pid}/tasks/next").status_code for _ in range(3 * LIMIT)]
        assert codes == [200] * 6 + [204] * (3 * LIMIT - 6)
    with stack.client(stack.admin_token) as admin:
        mask = png_bytes(np.full((32, 32), 255, np.uint8))
        codes = [
            admin.put(f"/images/{image_ids[0]}/mask", files={"file": ("m.png", mask)}).status_code
            for _ in range(2 * LIMIT)
        ]
        assert codes == [201] * (2 * LIMIT)


def test_openapi_declares_429_exactly_on_the_limited_routes(servers: Servers) -> None:
    declared = {}
    for name, stack in (("on", servers.on), ("off", servers.off)):
        paths = httpx.get(f"{stack.base_url}/openapi.json").json()["paths"]
        declared[name] = {
            (method.upper(), path)
            for path, ops in paths.items()
            for method, op in ops.items()
            if "429" in op.get("responses", {})
        }
    assert declared["on"] == set(LIMITED_ROUTES)
    assert declared["off"] == set()


def test_buckets_are_keyed_by_the_token_hash_never_the_token(servers: Servers) -> None:
    clock = Clock()  # a limiter's own clock, given to it
    limiter = RateLimiter(servers.on.settings, clock=clock)  # type: ignore[arg-type]
    assert [limiter.check("tasks", "other") for _ in range(LIMIT + 1)][-1] == 12.0
    clock.now += 12.0
    assert limiter.check("tasks", "other") == 0.0
    assert limiter.check("tasks", "secret-token") == 0.0
    assert limiter.check("uploads", "secret-token") == 0.0
    assert limiter.buckets["tasks"].keys() == [hash_token("other"), hash_token("secret-token")]
    assert limiter.buckets["uploads"].keys() == [hash_token("secret-token")]


def test_token_bucket_refills_evenly_and_forgets_the_least_recently_used() -> None:
    buckets = TokenBuckets(per_minute=60, max_keys=2)
    assert [buckets.take("a", 0.0) for _ in range(60)] == [0.0] * 60
    assert buckets.take("a", 0.0) == pytest.approx(1.0)
    assert buckets.take("a", 0.5) == pytest.approx(0.5)  # a refusal spends nothing
    assert buckets.take("a", 1.0) == 0.0
    assert buckets.take("a", 1.0) == pytest.approx(1.0)
    assert buckets.take("a", 1000.0) == 0.0  # refilled, but never above the burst of 60
    assert [buckets.take("a", 1000.0) for _ in range(59)] == [0.0] * 59
    assert buckets.take("a", 1000.0) > 0.0
    buckets.take("b", 1000.0)
    buckets.take("c", 1000.0)  # a third key: "a", the least recently used, is dropped
    assert buckets.keys() == ["b", "c"]
    assert buckets.take("a", 1000.0) == 0.0  # a fresh, full bucket


def _engineer(stack: Stack, pid: int) -> str:
    with stack.client(stack.admin_token) as admin:
        uid, token = make_user(admin, "engineer")
        assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
    return token


def test_uploads_are_counted_in_files_and_a_big_request_overdraws(servers: Servers) -> None:
    """Limit 5 files a minute, clock frozen. 3 files, then 2: the burst is spent in two
    requests. Another token sends 8 files at once with a full bucket: let in on credit, it
    leaves a debt of 3, so its next request is 4 files (48 s) away, and half of that later 2."""
    stack, clock = servers.on, servers.clock
    with stack.client(stack.admin_token) as admin:
        pid = make_project(admin)["id"]
    token_e, token_f = _engineer(stack, pid), _engineer(stack, pid)
    pictures = [(f"{i}.png", image_bytes(8, 8, seed=200 + i)) for i in range(13)]
    with stack.client(token_e) as e, stack.client(token_f) as f:
        assert upload(e, pid, *pictures[:3], split="train").status_code == 201
        assert upload(e, pid, *pictures[3:5]).status_code == 201
        _assert_refused(upload(e, pid, pictures[5]), UPLOADS, 12)
        r = upload(f, pid, *pictures[5:13])
        assert r.status_code == 201 and r.json()["created"] == 8
        _assert_refused(upload(f, pid, pictures[0]), UPLOADS, 48)
        clock.now += 24.0
        _assert_refused(upload(f, pid, pictures[0]), UPLOADS, 24)
        clock.now += 24.0
        r = upload(f, pid, pictures[0])  # back to one file of credit: let in (a duplicate)
        assert r.status_code == 201 and r.json()["duplicates"] == 1


def test_the_upload_debt_is_charged_before_the_answer(servers: Servers) -> None:
    """The files beyond the first are charged once the body is read, before the route
    answers: the very next request of the token sees the debt, whatever the machine's speed."""
    stack = servers.on
    with stack.client(stack.admin_token) as admin:
        pid = make_project(admin)["id"]
    token = _engineer(stack, pid)
    with stack.client(token) as e:
        r = upload(e, pid, *[(f"{i}.png", image_bytes(8, 8, seed=300 + i)) for i in range(6)])
        assert r.status_code == 201
        _assert_refused(upload(e, pid, ("x.png", image_bytes(8, 8, seed=399))), UPLOADS, 24)


def test_file_counter_counts_file_parts_in_any_chunking() -> None:
    """Three files and one plain field, fed whole and one byte at a time: 3 both ways. A body
    that is not multipart has no counter; a broken body stops the count without an error."""
    files = [("files", (f"{i}.png", b"x" * (100 * i), "image/png")) for i in range(3)]
    request = httpx.Request("POST", "http://x/", files=files, data={"split": "pool"})
    body = request.read()
    scope = {"headers": [(b"content-type", request.headers["content-type"].encode())]}
    for size in (len(body), 1):
        counter = FileCounter.for_scope(scope)
        assert counter is not None
        for start in range(0, len(body), size):
            counter.feed(body[start : start + size])
        assert counter.files == 3
    assert FileCounter.for_scope({"headers": [(b"content-type", b"application/json")]}) is None
    assert FileCounter.for_scope({"headers": []}) is None
    broken = FileCounter.for_scope(scope)
    assert broken is not None
    broken.feed(b"this is no multipart body at all" * 10)
    assert broken.files == 0


def test_token_bucket_debt_is_paid_back_before_the_next_request() -> None:
    buckets = TokenBuckets(per_minute=60)
    assert buckets.take("a", 0.0) == 0.0  # 59 left
    buckets.charge("a", 99, 0.0)  # a request of 100 files: 59 - 99 = -40
    assert buckets.balance("a", 0.0) == -40.0
    assert buckets.take("a", 0.0) == pytest.approx(41.0)  # back to 1 at 1 file/s
    assert buckets.take("a", 40.0) == pytest.approx(1.0)  # a refusal spends nothing
    assert buckets.take("a", 41.0) == 0.0
    assert buckets.balance("a", 41.0) == pytest.approx(0.0)
    buckets.charge("a", 0, 41.0)  # nothing to charge: nothing changes
    assert buckets.balance("b", 41.0) == 60.0  # an unknown key has a full bucket
