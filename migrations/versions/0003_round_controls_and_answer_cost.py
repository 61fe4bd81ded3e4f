"""rounds: control tasks, answer cost and model errors per task, SLIC smoothing of region maps

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 03:30:00.000000

- ``tasks.control``: drawn at random from the candidates not selected (the queue's yardstick);
- ``tasks.answered_pixels`` / ``model_wrong_pixels`` / ``clicks``: filled at submit;
- ``tasks.region_sigma`` and ``region_sets.sigma``: SLIC's Gaussian smoothing, part of the
  region map's identity (the unique key of ``region_sets`` gains it). Existing rows were made
  without smoothing, hence the server default 0.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("region_sigma", sa.Float(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("control", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
        batch_op.add_column(sa.Column("answered_pixels", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("model_wrong_pixels", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("clicks", sa.Integer(), nullable=True))
    with op.batch_alter_table("region_sets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sigma", sa.Float(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.drop_constraint("uq_region_sets_image_kind_size", type_="unique")
        batch_op.create_unique_constraint(
            "uq_region_sets_image_kind_size_sigma", ["image_id", "kind", "size", "sigma"]
        )


def downgrade() -> None:
    # Smoothed maps would collide with the unsmoothed ones under the old key.
    op.execute(sa.text("DELETE FROM region_sets WHERE sigma <> 0"))
    with op.batch_alter_table("region_sets", schema=None) as batch_op:
        batch_op.drop_constraint("uq_region_sets_image_kind_size_sigma", type_="unique")
        batch_op.create_unique_constraint(
            "uq_region_sets_image_kind_size", ["image_id", "kind", "size"]
        )
        batch_op.drop_column("sigma")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("clicks")
        batch_op.drop_column("model_wrong_pixels")
        batch_op.drop_column("answered_pixels")
        batch_op.drop_column("control")
        batch_op.drop_column("region_sigma")
