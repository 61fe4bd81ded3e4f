"""``python -m activeseg``: the ``activeseg`` command line (activeseg/cli.py)."""

from activeseg.cli import app

app()
