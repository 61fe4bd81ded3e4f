"""ASGI entry point: ``uvicorn activeseg.api.main:app``."""

import gc

from activeseg.api.app import create_app

app = create_app()

# What the process imported and built so far (about 210,000 objects: FastAPI, SQLAlchemy,
# pydantic, numpy and the app) lives as long as the process. Left to the collector, a full
# collection walks all of it while the process's requests wait: 125 ms measured
# (benchmarks/gc_pause.py), and the start-up heap itself sets off the first one soon after
# the server starts (BENCHMARKS.md "Full collections"). Frozen, a full collection walks only
# what the requests made since.
gc.collect()
gc.freeze()
