"""Schemathesis fuzzing of every operation in the OpenAPI schema, against a live server.

Why: the route tests send the requests their authors thought of. The fuzzer sends the ones
nobody did (ids past the integer columns, empty and odd unicode strings, wrong types, missing
parts, broken multipart bodies) and checks every answer against the contract the schema
promises to clients: no 5xx, only the status codes and content types each route declares,
and bodies that match the declared models. A route that can answer 404 or 409 must say so in
its schema, so generated clients and the `/docs` page do not lie.

The server is an app of its own per backend (not the shared `stack`): the fuzz revokes tokens
and deletes images, which must not disturb other tests of the session, and its jobs go to a
queue of their own. It is seeded with a project that has images, a mask, a trained and scored
model version with its report, a queue of tasks, a webhook and a baseline; path ids are drawn
from those rows part of the time, so the fuzz gets past the 404s into the routes' work.
Destructive operations run last. Generation is derandomized: a failure reproduces.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from activeseg.core.tables import Task
from tests.conftest import Stack, running_stack, stack_env
from tests.reliability.figures import record
from tests.utils import (
    build_queue_inline,
    image_bytes,
    make_project,
    make_user,
    png_bytes,
    run_job_inline,
    upload,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Not negative_data_rejection: it counts unknown query parameters (ignored, as HTTP APIs do) and
# the Authorization header this test adds to every request as invalid input that was accepted.
# Examples per operation (60 operations): about 3,000 requests per backend, 40 s on 2 cores.
# Hypothesis stops early on an operation whose inputs it has exhausted (GET /health has none).
EXAMPLES = int(os.environ.get("ACTIVESEG_FUZZ_EXAMPLES", "50"))
MIN_REQUESTS = 1000
# Small enough to train in seconds on 2 cores: the seed trains one version so the model,
# heatmap, report and Label Studio prediction routes have real rows to read.
TINY_MODEL = {
    "method": "mc_dropout",
    "mc_samples": 2,
    "depth": 1,
    "base_channels": 4,
    "steps": 2,
    "batch_size": 4,
    "patch_size": 32,
    "patience": None,
}
BASELINE_CSV = (
    "label,strategy,seed,round,labelled_regions,labelled_fraction,test_miou\n"
    "random,random,0,1,12,0.05,0.31\nrandom,random,0,2,24,0.10,0.42\n"
)
REVOKE = "DELETE /tokens/{token_id}"
# Destructive operations run last, in this order, so they cannot wreck the rest of the run.
LAST = ["DELETE /projects/{project_id}/webhooks/{webhook_id}", "DELETE /images/{image_id}", REVOKE]


@dataclass
class Fuzzed:
    stack: Stack
    ids: dict[str, list[Any]]  # real rows per path parameter name
    revoker_token: str  # an admin's token that acts for REVOKE: its id is never drawn
    revoker_token_id: int


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzed]:
    backend = request.param
    env = stack_env(backend, tmp_path_factory.mktemp(f"fuzz-{backend}"))
    env["ACTIVESEG_QUEUE"] = f"activeseg-fuzz-{os.getpid()}-{backend}"
    # Rate limits off: past the first 60 uploads each one would be a (declared) 429 and the
    # fuzz would stop reaching the upload code. The limits have tests of their own.
    env["ACTIVESEG_RATE_LIMIT_TASKS_PER_MINUTE"] = "0"
    env["ACTIVESEG_RATE_LIMIT_UPLOADS_PER_MINUTE"] = "0"
    try:
        with running_stack(backend, env) as stack:
            yield _seed(stack)
    finally:
        redis.Redis.from_url(env["ACTIVESEG_BROKER_URL"]).delete(env["ACTIVESEG_QUEUE"])


def _seed(stack: Stack) -> Fuzzed:
    with stack.client(stack.admin_token) as admin:
        pid = make_project(
            admin, n_classes=3, region_kind="grid", region_size=16, model=TINY_MODEL
        )["id"]
        r = upload(admin, pid, *[(f"img{i}.png", image_bytes(seed=i)) for i in range(3)])
        assert r.status_code == 201, r.text
        image_ids = [item["image"]["id"] for item in r.json()["data"]]
        mask = np.full((32, 48), 255, np.uint8)
        mask[:16, :24] = 1
        r = admin.put(
            f"/images/{image_ids[0]}/mask",
            files={"file": ("mask.png", png_bytes(mask), "image/png")},
        )
        assert r.status_code == 201, r.text
        queue_job = build_queue_inline(stack, pid)
        retrain_job = run_job_inline(stack, pid, "retrain")  # then evaluate, score, queue
        r = admin.get(f"/jobs/{retrain_job}")
        assert r.json()["state"] == "succeeded", r.text
        model_id = r.json()["result"]["model_version_id"]
        r = admin.get(f"/models/{model_id}/report")
        assert r.status_code == 200, r.text
        plots = sorted(r.json()["plots"])
        r = admin.post(
            f"/projects/{pid}/baseline",
            files={"file": ("curve.csv", BASELINE_CSV.encode(), "text/csv")},
        )
        assert r.status_code == 202, r.text
        r = admin.post(
            f"/projects/{pid}/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["model.trained"]},
        )
        assert r.status_code == 201, r.text
        webhook_id = r.json()["id"]
        token_ids = [admin.post("/tokens", json={}).json()["token"]["id"] for _ in range(3)]
        _, revoker_token = make_user(admin, "admin")
    with stack.client(revoker_token) as revoker:
        (revoker_token_id,) = [t["id"] for t in revoker.get("/tokens").json()["data"]]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        task_ids = list(s.scalars(select(Task.id).where(Task.project_id == pid).limit(4)))
    assert task_ids, "build_queue queued no task"
    ids = {
        "project_id": [pid],
        "image_id": image_ids,
        "task_id": task_ids,
        "job_id": [queue_job, retrain_job],
        "model_id": [model_id],
        "name": plots[:2],
        "webhook_id": [webhook_id],
        "token_id": token_ids,
    }
    return Fuzzed(stack, ids, revoker_token, revoker_token_id)


def _real_combos(path_names: list[str], ids: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Up to 6 assignments of real rows to all of an operation's path parameters."""
    pools = [ids.get(name) or [] for name in path_names]
    if not path_names or not all(pools):
        return []
    combos = itertools.islice(itertools.product(*pools), 6)
    return [dict(zip(path_names, combo, strict=True)) for combo in combos]


def _fuzz_operation(
    strategy: Any, base_url: str, session: requests.Session, headers: dict[str, str]
) -> Counter[int]:
    """Send EXAMPLES generated requests of one operation and check each answer; returns the
    status codes seen (raises the first failure, with a curl command to reproduce it)."""
    seen: Counter[int] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, headers=headers)
        seen[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        fuzz()
    except BaseExceptionGroup as group:  # schemathesis' FailureGroup: one operation's failures
        raise AssertionError(str(group)) from None
    return seen


def test_every_operation_answers_within_its_schema(fuzzed: Fuzzed) -> None:
    stack, ids = fuzzed.stack, fuzzed.ids
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")
    results = list(schema.get_all_operations())
    broken = [r.err() for r in results if isinstance(r, Err)]
    assert not broken, broken  # an operation schemathesis cannot even read
    operations = sorted(
        (r.ok() for r in results if isinstance(r, Ok)),
        key=lambda op: LAST.index(op.label) if op.label in LAST else -1,
    )
    session = requests.Session()
    seen: dict[str, Counter[int]] = {}
    failures: dict[str, str] = {}
    reached: list[str] = []  # GET operations whose path ids all have real rows
    started = time.monotonic()
    for op in operations:
        path_names = [p.name for p in op.path_parameters]
        combos = _real_combos(path_names, ids)
        if op.method.upper() == "GET" and combos:
            reached.append(op.label)
        strategy = st.one_of(
            [op.as_strategy(GenerationMode.POSITIVE, path_parameters=c) for c in combos]
            + [op.as_strategy(mode) for mode in GenerationMode]
        )
        token = stack.admin_token
        if op.label == REVOKE:
            token = fuzzed.revoker_token
            strategy = strategy.filter(
                lambda case: case.path_parameters.get("token_id") != fuzzed.revoker_token_id
            )
        headers = {"Authorization": f"Bearer {token}"}
        try:
            seen[op.label] = _fuzz_operation(strategy, stack.base_url, session, headers)
        except AssertionError as exc:
            failures[op.label] = str(exc)[:4000]
    elapsed = time.monotonic() - started
    total = sum(sum(c.values()) for c in seen.values())
    print(
        f"\nfuzz ({stack.backend}): {total} requests, {len(operations)} operations, {elapsed:.0f} s"
    )
    for label, statuses in seen.items():
        print(f"  {label:60s} {dict(sorted(statuses.items()))}")
    record(
        "schema fuzz",
        backend=stack.backend,
        requests=total,
        operations=len(operations),
        failures=len(failures),
        seconds=round(elapsed),
    )

    assert not failures, "\n\n".join(f"== {label}\n{text}" for label, text in failures.items())
    assert len(operations) >= 60, [op.label for op in operations]
    assert total >= MIN_REQUESTS, seen
    # The seeded rows were reached (and the admin token stayed valid): every read of a row the
    # seed made answered 2xx at least once.
    unreached = [label for label in reached if not any(200 <= c < 300 for c in seen[label])]
    assert not unreached, {label: seen[label] for label in unreached}
