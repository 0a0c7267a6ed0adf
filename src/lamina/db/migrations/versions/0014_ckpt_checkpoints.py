"""checkpoints: an instance's memory and instance layer saved together

Revision ID: 0014_ckpt_checkpoints
Revises: 0013_sched_host_disable
Create Date: 2026-12-07 17:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

import lamina.db.types

revision = "0014_ckpt_checkpoints"
down_revision = "0013_sched_host_disable"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("host_id", sa.String(length=36), nullable=True),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("requires", sa.JSON(), nullable=False),
        sa.Column("boot", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("paused_seconds", sa.Float(), nullable=True),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", lamina.db.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", lamina.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("instance_id", "name", name="uq_checkpoints_instance_name"),
    )
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.create_index("ix_checkpoints_created_id", ["created_at", "id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_checkpoints_instance_id"), ["instance_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_checkpoints_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_checkpoints_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_checkpoints_status"))
        batch_op.drop_index(batch_op.f("ix_checkpoints_owner"))
        batch_op.drop_index(batch_op.f("ix_checkpoints_instance_id"))
        batch_op.drop_index("ix_checkpoints_created_id")
    op.drop_table("checkpoints")
