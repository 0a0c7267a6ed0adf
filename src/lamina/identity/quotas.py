"""Per-user quotas, checked inside the transaction that takes the resource.

The user's row is locked first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write
transactions are serial already), so concurrent requests of one user queue and none can
overshoot.

Identity holds the limits (``quota_<name>`` on the user), the check and its error; what a
quota counts lives beside what it counts, as a ``Counter`` by quota name: ``instances``,
``vcpus`` and ``memory_mib`` in ``lamina.compute.quota``, ``image_bytes`` in
``lamina.images.quota``, ``volume_bytes`` in ``lamina.volumes.quota``. A domain checks its
own quotas with its counters (``check_quotas``); the wiring (``lamina.manager``) also
registers every counter in the manager's ``QuotaCounters``, for identity's own questions
(does a user still own instances?).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.errors import ConfigError, QuotaExceeded
from lamina.identity.models import QUOTAS, User

#: How much of one quota a user holds: ``counter(session, user_id)``.
Counter = Callable[[Session, str], int]


class QuotaCounters(Mapping[str, Counter]):
    """What each quota counts, by quota name; filled by the wiring with each domain's."""

    def __init__(self) -> None:
        self._counters: dict[str, Counter] = {}

    def register(self, name: str, counter: Counter) -> None:
        if name not in QUOTAS:
            raise ConfigError(f"no quota is named {name!r}; quotas are {', '.join(QUOTAS)}")
        if name in self._counters:
            raise ConfigError(f"a counter for quota {name!r} registered twice")
        self._counters[name] = counter

    def __getitem__(self, name: str) -> Counter:
        return self._counters[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._counters)

    def __len__(self) -> int:
        return len(self._counters)


def lock_user(session: Session, user_id: str) -> User | None:
    return session.scalar(select(User).where(User.id == user_id).with_for_update())


def check_quotas(
    session: Session,
    user_id: str | None,
    asked: Mapping[str, int],
    counters: Mapping[str, Counter],
) -> None:
    """Raise ``QuotaExceeded`` for the first quota in ``asked`` (name -> how much more) that
    would put the user past its limit, counting what they hold with ``counters``. Locks the
    user's row: call it in the transaction that takes the resource."""
    user = lock_user(session, user_id) if user_id else None
    if user is None:
        return
    for name, more in asked.items():
        limit = _limit(user, name)
        if limit is None:
            continue
        used = int(counters[name](session, user.id))
        if used + more > limit:
            raise _refuse(name, limit, used, more)


def quota_left(session: Session, user_id: str | None, name: str, counter: Counter) -> int | None:
    """What the user's ``name`` quota still allows (never below 0), None for no limit.
    Locks the user's row: call it in the transaction that takes the resource."""
    user = lock_user(session, user_id) if user_id else None
    limit = _limit(user, name) if user is not None else None
    if user is None or limit is None:
        return None
    return max(limit - int(counter(session, user.id)), 0)


def _limit(user: User, name: str) -> int | None:
    if name not in QUOTAS:
        raise ConfigError(f"no quota is named {name!r}; quotas are {', '.join(QUOTAS)}")
    limit: int | None = getattr(user, f"quota_{name}")
    return limit


def _refuse(name: str, limit: int, used: int, asked: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"quota exceeded: {name} (limit {limit}, in use {used}, requested {asked})",
        quota=name,
        limit=limit,
        used=used,
        requested=asked,
    )
