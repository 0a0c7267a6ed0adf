"""Alembic environment: run against the connection Lamina hands over."""

from alembic import context

from lamina.db.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only for `alembic revision --autogenerate`
    from sqlalchemy import create_engine

    connection = create_engine(context.config.get_main_option("sqlalchemy.url")).connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
