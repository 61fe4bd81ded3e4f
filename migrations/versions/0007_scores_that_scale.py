"""scores that scale: one score row per (version, image), chunk candidates, proposed classes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:12:31.402118

- ``image_region_scores``: one row per (model version, image) with every measure's pooled
  region scores as one float32 array (and the predicted class, centre and openness of each
  region), replacing one ``region_scores`` row per (version, measure, image, region);
- ``score_candidates``: one row per scoring chunk, the candidates ``build_queue`` merges;
- ``tasks.proposed_classes``: the queuing model's majority class of each of a task's regions
  (the lease payload reads it instead of the score rows);
- ``region_scores`` is dropped: nothing reads it any more. Its rows are not converted (a
  downgrade restores an empty table): the next scoring pass writes the new rows.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "image_region_scores",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("region_kind", sa.String(length=20), nullable=False),
        sa.Column("region_size", sa.Integer(), nullable=False),
        sa.Column("region_sigma", sa.Float(), nullable=False),
        sa.Column("labels_revision", sa.Integer(), nullable=False),
        sa.Column("n_regions", sa.Integer(), nullable=False),
        sa.Column("measures", sa.JSON(), nullable=False),
        sa.Column("means", sa.JSON(), nullable=False),
        sa.Column("scores", sa.LargeBinary(), nullable=False),
        sa.Column("classes", sa.LargeBinary(), nullable=False),
        sa.Column("centroids", sa.LargeBinary(), nullable=False),
        sa.Column("open_regions", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_image_region_scores_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_image_region_scores_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_region_scores")),
        sa.UniqueConstraint(
            "model_version_id", "image_id", name="uq_image_region_scores_model_image"
        ),
    )
    with op.batch_alter_table("image_region_scores", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_image_region_scores_image_id"), ["image_id"], unique=False
        )

    op.create_table(
        "score_candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("first_image_id", sa.Integer(), nullable=False),
        sa.Column("last_image_id", sa.Integer(), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("selected", sa.LargeBinary(), nullable=False),
        sa.Column("selected_complete", sa.Boolean(), nullable=False),
        sa.Column("controls", sa.LargeBinary(), nullable=False),
        sa.Column("controls_complete", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_score_candidates_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_candidates")),
        sa.UniqueConstraint(
            "model_version_id", "first_image_id", name="uq_score_candidates_model_first_image"
        ),
    )

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("proposed_classes", sa.JSON(), nullable=True))

    _drop_region_scores()


def _drop_region_scores() -> None:
    with op.batch_alter_table("region_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_region_scores_image_id"))
    op.drop_table("region_scores")


def _create_region_scores() -> None:
    """``region_scores`` as 0001 made it (empty)."""
    op.create_table(
        "region_scores",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("measure", sa.String(length=40), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("region", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("predicted_class", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_region_scores_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_region_scores_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_region_scores")),
        sa.UniqueConstraint(
            "model_version_id",
            "measure",
            "image_id",
            "region",
            name="uq_region_scores_model_measure_image_region",
        ),
    )
    with op.batch_alter_table("region_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_region_scores_image_id"), ["image_id"], unique=False)


def downgrade() -> None:
    _create_region_scores()
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("proposed_classes")

    op.drop_table("score_candidates")

    with op.batch_alter_table("image_region_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_region_scores_image_id"))
    op.drop_table("image_region_scores")
