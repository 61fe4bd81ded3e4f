"""signed-link keys, labelling-tool backend keys, tool annotations

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 13:53:57.660782

- ``link_keys``: HMAC keys of expiring signed links (images, masks, PNGs, reports);
- ``backend_keys``: the per-project secret Label Studio carries in its ML-backend URL;
- ``tool_annotations``: each labelling-tool annotation's own contribution to an image's
  labels, so that an update or a delete takes back only what it painted.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "link_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_link_keys")),
    )
    op.create_table(
        "backend_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=12), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_backend_keys_created_by_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_backend_keys_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backend_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_backend_keys_key_hash")),
    )
    with op.batch_alter_table("backend_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_backend_keys_project_id"), ["project_id"], unique=False
        )

    op.create_table(
        "tool_annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("tool", sa.String(length=20), nullable=False),
        sa.Column("external_id", sa.String(length=100), nullable=False),
        sa.Column("external_author", sa.String(length=100), nullable=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("blob_key", sa.String(length=200), nullable=True),
        sa.Column("painted_pixels", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_tool_annotations_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_tool_annotations_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_annotations")),
        sa.UniqueConstraint(
            "project_id", "tool", "external_id", name="uq_tool_annotations_external"
        ),
    )
    with op.batch_alter_table("tool_annotations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_tool_annotations_image_state", ["image_id", "state"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("tool_annotations", schema=None) as batch_op:
        batch_op.drop_index("ix_tool_annotations_image_state")

    op.drop_table("tool_annotations")
    with op.batch_alter_table("backend_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_backend_keys_project_id"))

    op.drop_table("backend_keys")
    op.drop_table("link_keys")
