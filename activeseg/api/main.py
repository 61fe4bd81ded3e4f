"""ASGI entry point: ``uvicorn activeseg.api.main:app``."""

from activeseg.api.app import create_app

app = create_app()
