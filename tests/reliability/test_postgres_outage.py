"""PostgreSQL crashes (immediate shutdown: every connection drops) and comes back while
annotators work.

During the outage every request that needs the database gets 503 with a clear message (never
a 500 or a hang); afterwards the same API process serves again without a restart (the pool
pings connections before use and replaces dead ones); every submission the service
acknowledged is in the database, once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, Stack
from tests.reliability.annotators import Crew, lost_labels, percentile, project_with_crew
from tests.reliability.figures import record
from tests.reliability.services import PrivatePostgres, stack_on

OUTAGE_S = 6.0
DB_DOWN = "the database is unavailable right now; retry in a few seconds"


@pytest.fixture
def broken(tmp_path: Path) -> Iterator[tuple[Stack, PrivatePostgres]]:
    pg = PrivatePostgres()
    pg.init()
    try:
        with stack_on(tmp_path / "data", f"{REDIS_URL}/13", pg.create_database("x")) as stack:
            yield stack, pg
    finally:
        pg.destroy()


@pytest.mark.integration
def test_a_postgres_crash_gives_503_then_recovers_with_no_label_lost(  # type: ignore[no-untyped-def]
    broken: tuple[Stack, PrivatePostgres],
) -> None:
    stack, pg = broken
    admin = stack.client(stack.admin_token)
    pid, members = project_with_crew(stack)

    with Crew(members) as crew:
        time.sleep(3)
        pg.stop("immediate")
        t_down = time.monotonic()
        time.sleep(1)
        health = admin.get("/health")
        assert health.status_code == 503, health.text
        assert health.json()["database"].startswith("down")
        me = admin.get("/users/me")
        assert me.status_code == 503 and me.json()["detail"] == DB_DOWN
        assert me.headers["Retry-After"] == "5"
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
        t_restart = time.monotonic()  # requests from here on may already find it up
        pg.start()
        t_up = time.monotonic()
        deadline = t_up + 30
        while not [o for o in crew.outcomes(t_up) if o.route == "lease" and o.status == 200]:
            assert time.monotonic() < deadline, "no lease succeeded 30 s after PostgreSQL came back"
            time.sleep(0.05)
        recovered_s = time.monotonic() - t_up
        time.sleep(3)
    assert admin.get("/health").json()["status"] in ("ok", "degraded")  # the broker is optional

    during = crew.outcomes(t_down + 0.5, t_restart)  # in-flight ones may have finished
    assert during, "the annotators made no request during the outage"
    wrong = [o for o in during if o.status != 503 or o.detail != DB_DOWN]
    assert not wrong, f"during the outage: {wrong[:5]}"
    errors = [o for o in crew.outcomes() if o.status >= 500 and o.status != 503 or o.status == 0]
    assert not errors, errors[:5]
    lost = lost_labels(stack.db, crew.acknowledged)
    assert lost == [], f"{len(lost)} acknowledged labels are missing"
    after = crew.outcomes(t_up + recovered_s)
    leases_after = [o for o in after if o.route == "lease" and o.status == 200]
    record(
        "postgresql crash",
        outage_s=OUTAGE_S,
        annotators=len(members),
        requests_during=len(during),
        answered_503_during=len(during) - len(wrong),
        first_lease_after_restart_s=round(recovered_s, 2),
        lease_p99_ms_after=round(percentile([o.ms for o in leases_after], 99), 1),
        acknowledged=len(crew.acknowledged),
        labels_lost=len(lost),
    )
