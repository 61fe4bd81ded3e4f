"""The server's entry point (``uvicorn activeseg.api.main:app``) freezes what it built at
start-up, so a full garbage collection in a serving process walks only what its requests made
(left unfrozen, each one stalls every request in flight for about 125 ms: BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_the_entry_point_freezes_the_start_up_heap(tmp_path: Path) -> None:
    probe = (
        "import gc, json, activeseg.api.main; "
        "print(json.dumps([gc.get_freeze_count(), len(gc.get_objects())]))"
    )
    env = {**os.environ, "ACTIVESEG_DATA_DIR": str(tmp_path)}
    env.pop("ACTIVESEG_DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    frozen, tracked = json.loads(out.stdout.strip().splitlines()[-1])
    # The app's heap is some 10^5 objects; a full collection now tracks a few thousand.
    assert frozen > 50_000
    assert tracked < frozen / 20
