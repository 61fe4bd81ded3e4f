"""The database an administration command works on: the one the settings name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from activeseg.core.settings import get_settings

if TYPE_CHECKING:
    from activeseg.core.db import Database


def open_database() -> Database:
    from activeseg.core.db import Database

    return Database(get_settings())
