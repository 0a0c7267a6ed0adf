"""undos retried after a host comes back

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 07:12:00.000000
"""

import sqlalchemy as sa
from alembic import op

import lamina.db.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("undo_retry_at", lamina.db.types.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("undo_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.create_index(batch_op.f("ix_jobs_undo_retry_at"), ["undo_retry_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_undo_retry_at"))
        batch_op.drop_column("undo_attempts")
        batch_op.drop_column("undo_retry_at")
