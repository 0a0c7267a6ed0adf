"""Group commit: many short write transactions from concurrent requests share one commit.

SQLite lets one writer in at a time, so a busy manager spends its write lock on handing over
and committing more than on writing. ``WriteBatcher`` runs the queued functions one after the
other in one thread and one transaction. A function that raises gets its caller the exception
and changes nothing: the transaction is rolled back and the other functions run again without
it. Every caller hears back only once the commit is done. It is for short, database-only
work (a few statements); anything that waits on the network or the disk runs outside it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Work:
    fn: Callable[[Session], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    ok: bool = False
    outcome: Any = None


class Writes(Protocol):
    """What the batcher needs of ``lamina.db.engine.Database``: a write transaction."""

    def write(self) -> AbstractContextManager[Session]: ...


class WriteBatcher:
    """One writer thread per process, started with the first piece of work."""

    def __init__(self, db: Writes, *, max_batch: int = 64) -> None:
        self._db, self._max_batch = db, max_batch
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in a committed write transaction; its result once committed."""
        loop = asyncio.get_running_loop()
        work = _Work(fn, loop, loop.create_future())
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="db-writer", daemon=True)
                self._thread.start()
        self._queue.put(work)
        result: T = await work.future
        return result

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)
            for work in batch:
                work.loop.call_soon_threadsafe(_settle, work)

    def _commit(self, batch: list[_Work]) -> None:
        """Commit the batch; a function that raises is taken out with its exception and the
        others run again in a fresh transaction (they are database-only, so rerunning them
        after the rollback is safe). No savepoint per function: failures are rare."""
        pending = batch
        while pending:
            failed: _Work | None = None
            try:
                with self._db.write() as session:
                    for work in pending:
                        failed = work
                        work.outcome, work.ok = work.fn(session), True
                    failed = None
                return
            except Exception as exc:  # noqa: BLE001 - handed to its caller
                if failed is None:  # the commit itself failed: nobody's change is in
                    log.warning("a batch of %d writes failed to commit: %s", len(pending), exc)
                    for work in pending:
                        work.outcome, work.ok = exc, False
                    return
                failed.outcome, failed.ok = exc, False
                pending = [work for work in pending if work is not failed]


def _settle(work: _Work) -> None:
    if work.future.done():  # the caller went away (a client that disconnected)
        return
    if work.ok:
        work.future.set_result(work.outcome)
    else:
        work.future.set_exception(work.outcome)
