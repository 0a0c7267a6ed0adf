"""Finding one thing by the name a person gave: the rule every resource that has a name
follows (instances, images, volumes, snapshots, networks, appliances, channels).

An id always wins. Otherwise the caller's own thing of that name, else the one thing of that
name they may see; several leave the name ambiguous, and the error lists them (id and owner)
so the caller can give the id instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lamina.errors import Ambiguous

T = TypeVar("T")


def pick_named(
    kind: str,
    ref: str,
    named: Sequence[T],
    caller: str | None,
    *,
    owner: Callable[[T], str | None] = lambda thing: getattr(thing, "owner", None),
    ident: Callable[[T], str] = lambda thing: str(getattr(thing, "id")),  # noqa: B009
) -> T | None:
    """The one of ``named`` (the things of name ``ref`` the caller may see) that ``ref``
    means: the caller's own if exactly one is theirs, else the only one; None if there is
    none; ``Ambiguous`` listing the candidates if there are several."""
    own = [thing for thing in named if caller is not None and owner(thing) == caller]
    if len(own) == 1:
        return own[0]
    if len(named) == 1:
        return named[0]
    if not named:
        return None
    candidates: list[dict[str, Any]] = [
        {"id": ident(thing), "owner": owner(thing)} for thing in (own or named)
    ]
    listed = ", ".join(c["id"] for c in candidates[:10])
    more = f" and {len(candidates) - 10} more" if len(candidates) > 10 else ""
    raise Ambiguous(
        f"several {kind}s are named {ref!r} ({listed}{more}): give the id",
        candidates=candidates,
    )
