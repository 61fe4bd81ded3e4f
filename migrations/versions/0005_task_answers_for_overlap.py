"""task answers for overlap > 1 (k answers per region, consensus, agreement)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 14:52:40.662607

- ``task_answers``: one row per (task, annotator) answer, unique, so nobody answers a
  region twice;
- ``tasks.answers``, ``tasks.agreement``, ``tasks.kappa_stats``: progress towards k answers,
  the agreement once all are in, and the task's share of the project's Fleiss' kappa.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "task_answers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("blob_key", sa.String(length=200), nullable=False),
        sa.Column("answered_pixels", sa.BigInteger(), nullable=False),
        sa.Column("clicks", sa.Integer(), nullable=False),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("leased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_answers_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_task_answers_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_answers")),
        sa.UniqueConstraint("task_id", "user_id", name="uq_task_answers_task_user"),
    )
    with op.batch_alter_table("task_answers", schema=None) as batch_op:
        batch_op.create_index("ix_task_answers_user", ["user_id", "task_id"], unique=False)

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("answers", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("agreement", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("kappa_stats", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("kappa_stats")
        batch_op.drop_column("agreement")
        batch_op.drop_column("answers")

    with op.batch_alter_table("task_answers", schema=None) as batch_op:
        batch_op.drop_index("ix_task_answers_user")

    op.drop_table("task_answers")
