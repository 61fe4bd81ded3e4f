"""ASGI entry point: ``uvicorn activeseg.api.main:app``."""

import gc

from activeseg.api.app import create_app

app = create_app()
# What exists now (modules, the app, its routes, the settings) lives as long as the process:
# freeze it, so the collector's full passes walk only what requests make. Unfrozen, a full pass
# walks about 200,000 objects (tens of ms, every few hundred requests): the latency tail of the
# lease and submit routes (BENCHMARKS.md, "Annotation teams").
gc.collect()
gc.freeze()
