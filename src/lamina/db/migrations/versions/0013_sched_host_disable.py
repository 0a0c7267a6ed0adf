"""hosts can be disabled (no new placements) with a reason

Revision ID: 0013_sched_host_disable
Revises: 0012_job_target_name
Create Date: 2026-12-07 17:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import lamina.db.types

revision = "0013_sched_host_disable"
down_revision = "0012_job_target_name"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_at", lamina.db.types.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("disabled_reason", sa.Text(), nullable=True))
    # The status "disabled" was reserved and nothing set it; should a row have it, it becomes
    # a disabled host whose state the next heartbeat tells.
    op.execute(
        "UPDATE hosts SET disabled_at = updated_at, status = 'down' WHERE status = 'disabled'"
    )


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("disabled_reason")
        batch_op.drop_column("disabled_at")
