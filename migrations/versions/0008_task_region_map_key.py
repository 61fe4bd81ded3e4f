"""tasks name their region map's blob

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 17:30:00.000000

- ``tasks.region_map_key``: the blob key of the task's region map, written with the round, so
  the lease and the submit read the map without looking up its ``region_sets`` row. Tasks
  queued before stay NULL and keep looking it up (correct, one query slower); nothing is
  backfilled, so the upgrade does not rewrite a large tasks table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("region_map_key", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("region_map_key")
