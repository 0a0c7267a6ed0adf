"""volume and snapshot names (optional, as Cinder's)

Revision ID: 0011_volume_names
Revises: 0010
Create Date: 2026-12-07 13:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_volume_names"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("volumes", "snapshots"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("name", sa.String(length=63), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{table}_name"), ["name"], unique=False)


def downgrade() -> None:
    for table in ("snapshots", "volumes"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_name"))
            batch_op.drop_column("name")
