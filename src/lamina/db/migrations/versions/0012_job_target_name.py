"""jobs keep their target's name

Revision ID: 0012_job_target_name
Revises: 0011_volume_names
Create Date: 2026-12-07 14:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_job_target_name"
down_revision = "0011_volume_names"
branch_labels = None
depends_on = None

#: The targets that had names when this migration was written: target_type -> table.
NAMED = {
    "instance": "instances",
    "host": "hosts",
    "network": "networks",
    "appliance": "appliances",
    "volume": "volumes",
    "snapshot": "snapshots",
}


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("target_name", sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_target_name"), ["target_name"], unique=False)
    # The jobs of targets that still exist get their names; those of deleted ones keep none.
    for target_type, table in NAMED.items():
        op.execute(
            f"UPDATE jobs SET target_name = (SELECT {table}.name FROM {table} "  # noqa: S608
            f"WHERE {table}.id = jobs.target_id) WHERE target_type = '{target_type}'"
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_target_name"))
        batch_op.drop_column("target_name")
