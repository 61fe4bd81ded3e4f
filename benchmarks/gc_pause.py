"""How long the API process stops for a full garbage collection, with and without freezing
what it imported at start-up (``activeseg/api/main.py`` freezes it).

Usage::

    python benchmarks/gc_pause.py [--repeats 20]

Builds the app as ``uvicorn activeseg.api.main:app`` does (embedded settings in a throw-away
folder), then times ``gc.collect()`` ``--repeats`` times as the process holds it, and again
after ``gc.collect(); gc.freeze()``, in the same process. While a collection runs no other
thread of the process runs Python, so every request in flight waits that long. Prints one
JSON line: the objects the collector tracks, and the median and max milliseconds of a full
collection in each state.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def full_collections(repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gc.collect()
        out.append(1000 * (time.perf_counter() - t0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from activeseg.api.app import create_app
    from activeseg.core.settings import Settings

    with tempfile.TemporaryDirectory(prefix="activeseg-gc-") as tmp:
        app = create_app(Settings(data_dir=Path(tmp)), dispatcher=lambda job_id: True)
        tracked = len(gc.get_objects())
        before = full_collections(args.repeats)
        gc.collect()
        gc.freeze()
        frozen = gc.get_freeze_count()
        after = full_collections(args.repeats)
        gc.unfreeze()
        app.state.db.dispose()

    def summary(ms: list[float]) -> dict[str, float]:
        return {"median_ms": round(statistics.median(ms), 2), "max_ms": round(max(ms), 2)}

    print(
        json.dumps(
            {
                "tracked_objects": tracked,
                "frozen_objects": frozen,
                "full_collection": summary(before),
                "full_collection_frozen": summary(after),
            }
        )
    )


if __name__ == "__main__":
    main()
