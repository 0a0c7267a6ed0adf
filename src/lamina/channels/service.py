"""Subscribed channels: subscribe, refresh, list, remove, and the items of their feeds.

A feed is verified against the pinned key before anything of it is stored, and the network
is used outside any database transaction: a slow channel server never holds the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from lamina import fetchpolicy
from lamina.channels.feed import MAX_BYTES, Feed, Item, parse_feed
from lamina.channels.models import Channel
from lamina.channels.signing import fingerprint, parse_public_key
from lamina.channels.verify import verify_feed
from lamina.db.refs import pick_named
from lamina.db.types import utcnow
from lamina.errors import Conflict, InvalidRequest, LaminaError, NotFound
from lamina.identity.access import shown_owner
from lamina.identity.accounts import require_admin
from lamina.identity.principal import Principal
from lamina.identity.users import access_keys

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from lamina.services import Services

log = logging.getLogger(__name__)
MAX_SIGNATURE = 4096
Change = tuple[str, str, Literal["new", "updated"]]


@dataclass(frozen=True)
class Fetched:
    """A feed as its server sent it, with the validators to send back next time."""

    data: bytes
    signature: str
    etag: str | None
    last_modified: str | None


def http_client(svc: Services) -> httpx.Client:
    """A client for channel servers and their mirrors: the configured timeout, a few
    redirects, every connection checked by the fetch policy (``channels.allow_private``)."""
    cfg = svc.settings.channels
    return fetchpolicy.http_client(
        fetchpolicy.FetchPolicy(allow_private=cfg.allow_private),
        timeout=cfg.timeout_seconds,
        max_redirects=5,
    )


def _get(
    client: httpx.Client, url: str, limit: int, headers: dict[str, str]
) -> tuple[httpx.Response, bytes]:
    """GET ``url`` reading at most ``limit`` bytes of body; LocationUnavailable if it fails
    or the fetch policy refuses it (the reason is logged), InvalidRequest if the body is
    larger."""
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 304:
                return response, b""
            if response.status_code >= 400:
                raise fetchpolicy.unavailable(url, f"answered {response.status_code}")
            body = bytearray()
            for block in response.iter_bytes():
                body += block
                if len(body) > limit:
                    raise InvalidRequest(f"{url} is larger than {limit} bytes", url=url)
            return response, bytes(body)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise fetchpolicy.unavailable(url, f"{type(exc).__name__}: {exc}") from None


def fetch_feed(
    client: httpx.Client, url: str, etag: str | None = None, last_modified: str | None = None
) -> Fetched | None:
    """The feed and its signature; None if the server says the feed has not changed (304)
    since the ``etag`` / ``last_modified`` given."""
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    response, data = _get(client, url, MAX_BYTES, headers)
    if response.status_code == 304:
        return None
    _, signature = _get(client, url + ".sig", MAX_SIGNATURE, {})
    return Fetched(
        data,
        signature.decode("ascii", "replace"),
        response.headers.get("etag"),
        response.headers.get("last-modified"),
    )


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest(f"{url!r} is not an http(s) URL of a channel feed", url=url)
    return url


def feed_of(channel: Channel) -> Feed:
    """The channel's last verified feed."""
    return parse_feed(channel.feed, channel.url)


def describe(channel: Channel) -> dict[str, Any]:
    return {
        "id": channel.id,
        "url": channel.url,
        "title": channel.title,
        "public_key": channel.public_key,
        "fingerprint": channel.fingerprint,
        "appliances": len(feed_of(channel).items),
        "etag": channel.etag,
        "last_modified": channel.last_modified,
        "refreshed_at": channel.refreshed_at,
        "last_error": channel.last_error,
        "owner": channel.owner,
        "created_at": channel.created_at,
    }


def get_channel(session: Session, channel_id: str) -> Channel:
    channel = session.get(Channel, channel_id)
    if channel is None:
        raise NotFound(f"channel {channel_id!r} does not exist", channel=channel_id)
    return channel


def find_channel(session: Session, ref: str, who: Principal | None = None) -> Channel:
    """A channel by id, by its feed's URL, else by its title (``lamina.db.refs.pick_named``:
    several channels of that title are ``Ambiguous``); NotFound naming ``ref``."""
    channel = session.get(Channel, ref)
    if channel is None:
        channel = session.scalar(select(Channel).where(Channel.url == ref))
    if channel is None:
        titled = list(session.scalars(select(Channel).where(Channel.title == ref)))
        channel = pick_named("channel", ref, titled, who.user_id if who else None)
    if channel is None:
        raise NotFound(
            f"no channel {ref!r} (give its id, title or feed URL: lamina channel list)",
            channel=ref,
        )
    return channel


def subscribe(svc: Services, who: Principal, url: str, public_key: str) -> dict[str, Any]:
    """Fetch the feed at ``url`` and ``<url>.sig``, verify them with the pinned key and only
    then store the channel. Raises InvalidRequest (bad URL or key), Conflict (already
    subscribed), VerificationFailed (502), LocationUnavailable (not fetched, for any reason).
    Administrators only."""
    require_admin(who)
    key = parse_public_key(public_key)
    _check_url(url)
    with svc.db.read() as s:
        if s.scalar(select(Channel.id).where(Channel.url == url)) is not None:
            raise Conflict(f"already subscribed to {url}", url=url)
    with http_client(svc) as client:
        fetched = fetch_feed(client, url)
    assert fetched is not None  # nothing conditional was asked
    feed = verify_feed(key, fetched.data, fetched.signature, url)
    try:
        with svc.db.write() as s:
            channel = Channel(
                url=url,
                public_key=public_key.strip(),
                fingerprint=fingerprint(key),
                title=feed.title,
                etag=fetched.etag,
                last_modified=fetched.last_modified,
                feed=fetched.data,
                refreshed_at=utcnow(),
                owner=who.user_id,
                created_at=utcnow(),
            )
            s.add(channel)
            s.flush()
            return describe(channel)
    except IntegrityError:
        raise Conflict(f"already subscribed to {url}", url=url) from None


def changes(old: Feed, new: Feed) -> list[Change]:
    """The items of ``new`` that ``old`` lacked: a ``new`` appliance, or an ``updated`` one
    (another version of an appliance ``old`` listed)."""
    known = {(i.name, i.version) for i in old.items}
    names = {i.name for i in old.items}
    return [
        (i.name, str(i.version), "updated" if i.name in names else "new")
        for i in new.items
        if (i.name, i.version) not in known
    ]


def refresh(svc: Services, channel_id: str) -> list[Change]:
    """Fetch the feed again, conditionally (an unchanged feed is a 304 and keeps the cache),
    verify it with the pinned key, store it; answers what is new or updated. A failure is
    recorded as the channel's ``last_error`` and raised; the cached feed stays."""
    with svc.db.read() as s:
        channel = get_channel(s, channel_id)
        url, token = channel.url, channel.public_key
        etag, modified, old = channel.etag, channel.last_modified, feed_of(channel)
    try:
        with http_client(svc) as client:
            fetched = fetch_feed(client, url, etag, modified)
        if fetched is not None:
            feed = verify_feed(parse_public_key(token), fetched.data, fetched.signature, url)
    except LaminaError as exc:
        with svc.db.write() as s:
            get_channel(s, channel_id).last_error = exc.message
        raise
    with svc.db.write() as s:
        channel = get_channel(s, channel_id)
        channel.refreshed_at = utcnow()
        channel.last_error = None
        if fetched is None:
            return []
        channel.feed, channel.title = fetched.data, feed.title
        channel.etag, channel.last_modified = fetched.etag, fetched.last_modified
    found = changes(old, feed)
    for name, version, what in found:
        log.info("channel %s: %s %s (%s)", url, name, version, what)
    return found


def refresh_channel(
    svc: Services, who: Principal, ref: str
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """``refresh`` on demand (administrators only) of the channel ``ref`` (id, URL or title):
    the channel as it now is, and what is new or updated (``name``, ``version``,
    ``change``)."""
    require_admin(who)
    with svc.db.read() as s:
        channel_id = find_channel(s, ref, who).id
    found = refresh(svc, channel_id)
    with svc.db.read() as s:
        described = _shown(s, who, [describe(get_channel(s, channel_id))])[0]
    return described, [{"name": n, "version": v, "change": c} for n, v, c in found]


def list_channels(svc: Services, who: Principal) -> list[dict[str, Any]]:
    """Every subscribed channel, oldest first; a member is not told who subscribed."""
    with svc.db.read() as s:
        return _shown(s, who, all_channels(s))


def show_channel(svc: Services, who: Principal, ref: str) -> dict[str, Any]:
    """One channel (id, URL or title) with the appliances its feed lists (``items``: name,
    version, kind, label), as anyone may read it."""
    with svc.db.read() as s:
        channel = find_channel(s, ref, who)
        described = _shown(s, who, [describe(channel)])[0]
        described["items"] = [
            {"name": i.name, "version": str(i.version), "kind": i.kind, "label": i.label}
            for i in sorted(feed_of(channel).items, key=lambda i: (i.name, i.version))
        ]
    return described


def _shown(session: Session, who: Principal, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The channels as ``who`` may see them: the subscriber's id and access key
    (``owner_key``) only to administrators and the subscriber."""
    keys = access_keys(session, [c["owner"] for c in found])
    for channel in found:
        channel["owner"] = shown_owner(who, channel["owner"])
        channel["owner_key"] = keys.get(channel["owner"] or "")
    return found


def all_channels(session: Session) -> list[dict[str, Any]]:
    return [describe(c) for c in session.scalars(select(Channel).order_by(Channel.created_at))]


def remove(
    svc: Services,
    who: Principal,
    ref: str,
    in_use: Callable[[Session, str], Sequence[str]],
) -> dict[str, Any]:
    """Unsubscribe from the channel ``ref`` (id, URL or title; administrators only); Conflict
    while ``in_use`` names something installed from the channel (the appliances domain says
    what, and calls this: ``lamina.appliances.catalog.remove_channel``)."""
    require_admin(who)
    with svc.db.write() as s:
        channel = find_channel(s, ref, who)
        installed = list(in_use(s, channel.id))
        if installed:
            raise Conflict(
                f"channel {channel.title or channel.id} still has installed appliances "
                f"({', '.join(installed)}): remove them first",
                channel=channel.id,
                appliances=installed,
            )
        described = describe(channel)
        s.delete(channel)
    return described


def items(session: Session) -> list[tuple[Channel, Item]]:
    """Every item of every subscribed channel."""
    channels = session.scalars(select(Channel).order_by(Channel.created_at))
    return [(c, item) for c in channels for item in feed_of(c).items]
