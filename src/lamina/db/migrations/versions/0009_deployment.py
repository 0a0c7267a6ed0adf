"""the deployment id

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 07:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

import lamina.db.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", lamina.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("deployment")
