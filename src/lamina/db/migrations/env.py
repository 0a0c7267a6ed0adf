"""Alembic environment: run against the connection Lamina hands over.

Upgrading needs no models (the revisions say what to do). Writing a new revision with
``--autogenerate`` compares the database with every domain's tables: ``lamina.manager``
(which knows the domains) hands their metadata over as ``attributes["metadata"]``, see
``lamina.manager.new_revision``.
"""

from alembic import context

connection = context.config.attributes.get("connection")
metadata = context.config.attributes.get("metadata")
if connection is None:  # pragma: no cover - only for autogenerating a revision
    from sqlalchemy import create_engine

    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "set sqlalchemy.url to autogenerate a revision"
    connection = create_engine(url).connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
