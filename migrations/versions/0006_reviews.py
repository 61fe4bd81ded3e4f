"""reviews of disputed tasks (accept, reject, correct)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 15:27:50.177084

- ``task_reviews``: one row per reviewer decision on a disputed task (never updated);
- ``task_answers.review_id``, ``task_answers.rejected_at``: the review that decided an
  answer, and when it was rejected;
- the unique (task, user) constraint of ``task_answers`` becomes a partial unique index over
  the answers not rejected, so an annotator whose answer was rejected may answer again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("rejected_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "task_reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=True),
        sa.Column("decision", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("revision_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["reviewer_id"],
            ["users.id"],
            name=op.f("fk_task_reviews_reviewer_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["revision_id"],
            ["label_revisions.id"],
            name=op.f("fk_task_reviews_revision_id_label_revisions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_reviews_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_reviews")),
    )
    with op.batch_alter_table("task_reviews", schema=None) as batch_op:
        batch_op.create_index("ix_task_reviews_task", ["task_id"], unique=False)

    with op.batch_alter_table("task_answers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("review_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint("uq_task_answers_task_user", type_="unique")
        batch_op.create_index(
            "uq_task_answers_task_user_live",
            ["task_id", "user_id"],
            unique=True,
            postgresql_where=LIVE,
            sqlite_where=LIVE,
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_task_answers_review_id_task_reviews"),
            "task_reviews",
            ["review_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    # Rejected answers would break the restored unique (task, user) constraint: drop them.
    op.execute("DELETE FROM task_answers WHERE rejected_at IS NOT NULL")
    with op.batch_alter_table("task_answers", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_task_answers_review_id_task_reviews"), type_="foreignkey"
        )
        batch_op.drop_index(
            "uq_task_answers_task_user_live", postgresql_where=LIVE, sqlite_where=LIVE
        )
        batch_op.create_unique_constraint("uq_task_answers_task_user", ["task_id", "user_id"])
        batch_op.drop_column("rejected_at")
        batch_op.drop_column("review_id")

    with op.batch_alter_table("task_reviews", schema=None) as batch_op:
        batch_op.drop_index("ix_task_reviews_task")

    op.drop_table("task_reviews")
