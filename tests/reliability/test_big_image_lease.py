"""Issue 14's case at its full size: leases on another project stay fast (no 503, p99 within
its bound) while a worker scores a 6000 x 6000 (36 Mpx) superpixel image on the embedded
SQLite default. Minutes on two cores, so it runs with `make reliability`; the default suite
runs the same check at 3000 x 3000 (tests/jobs/test_db_contention.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.jobs.test_db_contention import check_leases_while_scoring, embedded  # noqa: F401

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_a_lease_stays_fast_while_a_36_mpx_image_is_scored(
    embedded: Stack,  # noqa: F811
    tmp_path: Path,
) -> None:
    check_leases_while_scoring(embedded, tmp_path, 6000)
