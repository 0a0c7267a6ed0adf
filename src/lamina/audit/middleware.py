"""Records every state-changing request (POST, PUT, PATCH, DELETE), refused ones included,
once its response has been sent; gives every request an id, returned as ``X-Request-Id``.

Pure ASGI, so bodies stream through untouched. Who made a request comes from what the
``principal`` dependency left on ``request.state`` (Starlette keeps it in ``scope["state"]``):
the authenticated user, or else the access key a refused request claimed. Headers and bodies
are never recorded; only a small JSON error body is read, for its ``code``. Events are written
by one background thread, so no response waits on the database, and a failed write is logged
and dropped: auditing never makes a request fail.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamina.audit.models import AuditEvent
from lamina.audit.service import RECORDED_METHODS
from lamina.db import Database
from lamina.db.types import utcnow

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
#: Error bodies up to this size are kept to read their ``code``; larger ones, and every
#: success body, only pass through.
MAX_ERROR_BODY = 4096
#: Column widths of ``AuditEvent``: longer values (a made-up claimed key) are cut, not refused.
_SHORT = 64
_EVENTS = AuditEvent.metadata.tables[AuditEvent.__tablename__]


@dataclass(frozen=True)
class AuditRecord:
    """One request as it will be stored (the columns of ``AuditEvent``)."""

    at: datetime
    user_id: str | None
    access_key: str | None
    method: str
    path: str
    status: int
    outcome: str | None
    remote_addr: str | None
    request_id: str
    duration_ms: float


class AuditWriter:
    """Stores records from a queue in one daemon thread, a batch per transaction. The thread
    starts with the first record; ``close`` writes what is queued and stops it."""

    BATCH = 100
    LINGER = 0.02

    def __init__(self, db: Database, *, max_pending: int = 10_000) -> None:
        self._db = db
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, record: AuditRecord) -> None:
        """Queue ``record`` without waiting; drops it (with a warning) if the queue is full."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            log.warning(
                "audit queue full: not recording %s %s (request %s)",
                record.method,
                record.path,
                record.request_id,
            )

    def close(self, timeout: float = 10.0) -> None:
        """Write every queued record, then stop the thread (waiting at most ``timeout``)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("audit queue still full at shutdown; queued records may be lost")
            return
        thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            # Gather what else arrives within LINGER: under load one transaction then holds
            # many records, instead of one record costing a transaction of its own.
            until = time.monotonic() + self.LINGER
            while len(batch) < self.BATCH and batch[-1] is not None:
                try:
                    batch.append(self._queue.get(timeout=max(until - time.monotonic(), 0)))
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            if records:
                self._write(records)
            if len(records) < len(batch):
                return

    def _write(self, records: list[AuditRecord]) -> None:
        try:
            with self._db.write() as s:
                s.connection().execute(_EVENTS.insert(), [vars(r) for r in records])
        except Exception:
            if len(records) > 1:
                # One bad record must not lose its neighbours.
                for record in records:
                    self._write([record])
                return
            log.exception("could not record %s %s", records[0].method, records[0].path)


class AuditMiddleware:
    def __init__(self, app: ASGIApp, db: Database) -> None:
        self.app = app
        self.writer = AuditWriter(db)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._flush_on_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        recorded = scope["method"] in RECORDED_METHODS
        at, started = utcnow(), time.perf_counter()
        status: int | None = None
        error_body: bytearray | None = None
        id_header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, error_body
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [*message.get("headers", []), id_header]
                message = {**message, "headers": headers}
                if recorded and status >= 400 and _small_json(headers):
                    error_body = bytearray()
            elif message["type"] == "http.response.body" and error_body is not None:
                chunk = message.get("body", b"")
                if len(error_body) + len(chunk) > MAX_ERROR_BODY:
                    error_body = None
                else:
                    error_body += chunk
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if recorded:
                duration_ms = (time.perf_counter() - started) * 1000
                self._record(scope, state, at, status, error_body, request_id, duration_ms)

    def _record(
        self,
        scope: Scope,
        state: dict[str, Any],
        at: datetime,
        status: int | None,
        error_body: bytearray | None,
        request_id: str,
        duration_ms: float,
    ) -> None:
        try:
            who = state.get("principal")
            user_id = getattr(who, "user_id", None)
            access_key = getattr(who, "access_key", None) or state.get("claimed")
            if access_key is None:
                access_key = _claimed_key(scope)
            outcome: str | None = None
            if status is None:
                # The app raised before answering: Starlette's outermost handler sends a 500.
                status, outcome = 500, "internal_error"
            elif status >= 400:
                outcome = _error_code(error_body)
            query = scope.get("query_string", b"").decode("latin-1")
            client = scope.get("client")
            self.writer.submit(
                AuditRecord(
                    at=at,
                    user_id=user_id,
                    access_key=_cut(access_key),
                    method=scope["method"],
                    path=scope.get("path", "") + (f"?{query}" if query else ""),
                    status=status,
                    outcome=_cut(outcome),
                    remote_addr=_cut(client[0]) if client else None,
                    request_id=request_id,
                    duration_ms=round(duration_ms, 3),
                )
            )
        except Exception:
            log.exception("could not record %s request %s", scope.get("method"), request_id)

    def _flush_on_shutdown(self, send: Send) -> Send:
        async def forward(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await run_in_threadpool(self.writer.close)
            await send(message)

        return forward


def _small_json(headers: list[tuple[bytes, bytes]]) -> bool:
    found = {k.lower(): v for k, v in headers}
    kind = found.get(b"content-type", b"").split(b";")[0].strip()
    length = found.get(b"content-length")
    small = length is None or (length.isdigit() and int(length) <= MAX_ERROR_BODY)
    return small and kind.endswith(b"json")


def _error_code(body: bytearray | None) -> str | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else None


def _claimed_key(scope: Scope) -> str | None:
    """The access key named by a signed request that never reached authentication (an
    unknown route, say); the signature after it is not kept."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            key = value.decode("latin-1").partition(" ")[2].rpartition(":")[0]
            return key or None
    return None


def _cut(value: str | None) -> str | None:
    return value[:_SHORT] if value is not None else None
