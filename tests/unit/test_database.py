"""The database wrapper: URLs people write, SQLite tuning, migrations."""

from __future__ import annotations

from sqlalchemy import inspect, text

from lamina.db import Database


def test_plain_postgresql_urls_use_psycopg3() -> None:
    db = Database("postgresql://lamina@127.0.0.1:1/x", migrate=False)
    assert db.url == "postgresql+psycopg://lamina@127.0.0.1:1/x"
    assert db.engine.dialect.driver == "psycopg"


def test_sqlite_is_migrated_and_in_wal_mode(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    with db.read() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    tables = set(inspect(db.engine).get_table_names())
    assert {"hosts", "instances", "jobs", "job_steps", "alembic_version"} <= tables
    Database(sqlite_url).dispose()  # migrating twice is a no-op
    db.dispose()
