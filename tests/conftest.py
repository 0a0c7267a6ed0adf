"""Fixtures shared by every suite: databases (SQLite and a real PostgreSQL server)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Postgres  # noqa: E402

from lamina.db import Database  # noqa: E402

pytest_plugins = ["namespaces", "clouds", "swift", "hosts"]
_names = itertools.count()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A PostgreSQL server for the whole session, started on first use."""
    server = Postgres(tmp_path_factory.mktemp("pg")).start()
    yield server
    server.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'lamina.db'}"


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    return postgres.create_database(f"t{next(_names)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each database test runs on both backends."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()
