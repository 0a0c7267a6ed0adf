"""The audit trail's time filters and its background writer (on SQLite, no daemons)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from lamina.audit.middleware import AuditRecord, AuditWriter
from lamina.audit.service import list_events, parse_time
from lamina.db import Database
from lamina.errors import InvalidRequest

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        (" 2d ", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("0m", timedelta(0)),
    ],
)
def test_relative_times_count_back_from_now(text: str, back: timedelta) -> None:
    assert parse_time(text, now=NOW) == NOW - back


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05+02:00", datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),
    ],
)
def test_iso_times_are_utc(text: str, expected: datetime) -> None:
    when = parse_time(text, now=NOW)
    assert when == expected and when.tzinfo is UTC


@pytest.mark.parametrize(
    "text", ["", "yesterday", "1y", "-1h", "1.5h", "h", "2026-13-01", "99999999999d"]
)
def test_bad_times_are_refused_naming_the_parameter(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^since: .*1h"):
        parse_time(text, name="since", now=NOW)


@pytest.fixture
def database(sqlite_url: str) -> Iterator[Database]:
    db = Database(sqlite_url)
    yield db
    db.dispose()


def record(minutes_ago: int, access_key: str | None, method: str = "POST") -> AuditRecord:
    return AuditRecord(
        at=NOW - timedelta(minutes=minutes_ago),
        user_id=None,
        access_key=access_key,
        method=method,
        path="/instances",
        status=201,
        outcome=None,
        remote_addr="127.0.0.1",
        request_id=f"r{minutes_ago}",
        duration_ms=1.5,
    )


def test_the_writer_stores_records_and_the_filters_find_them(database: Database) -> None:
    writer = AuditWriter(database)
    writer.submit(record(30, "alice"))
    writer.submit(record(20, "bob", "DELETE"))
    writer.submit(record(10, "alice", "PUT"))
    writer.close()
    with database.read() as s:
        assert [e.request_id for e in list_events(s)] == ["r10", "r20", "r30"]
        assert [e.request_id for e in list_events(s, access_key="alice")] == ["r10", "r30"]
        since = NOW - timedelta(minutes=25)
        assert [e.request_id for e in list_events(s, since=since)] == ["r10", "r20"]
        assert [e.request_id for e in list_events(s, until=since)] == ["r30"]
        assert [e.request_id for e in list_events(s, method="delete")] == ["r20"]
        assert [e.request_id for e in list_events(s, limit=1)] == ["r10"]
        with pytest.raises(InvalidRequest, match="method"):
            list_events(s, method="GET")


def test_a_failed_write_is_logged_and_keeps_the_good_records(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    writer = AuditWriter(database)
    bad = AuditRecord(**{**record(5, "eve").__dict__, "status": None})  # type: ignore[arg-type]
    writer.submit(bad)
    writer.submit(record(1, "alice"))
    writer.close()
    with database.read() as s:
        assert [e.request_id for e in list_events(s)] == ["r1"]
    assert "could not record POST /instances" in caplog.text
