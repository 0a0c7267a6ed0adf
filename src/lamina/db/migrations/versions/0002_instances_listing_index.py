"""instances: one index on (created_at, id), the listing's order

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_created_at")
        batch.create_index("ix_instances_created_id", ["created_at", "id"])


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_created_id")
        batch.create_index("ix_instances_created_at", ["created_at"])
