"""The Python client of Lamina's REST API. The CLI is built on it.

httpx (and the signing and error modules that need it) is imported when the first client is
made, not with this module: the CLI imports this module to list its commands, and must start
quickly (``benchmarks/cli.py``).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from lamina.client.credentials import Credentials, check_url, load_credentials
from lamina.errors import (
    BackendUnavailable,
    ConfigError,
    Conflict,
    Forbidden,
    InvalidRequest,
    LaminaError,
    NotFound,
    Timeout,
)

if TYPE_CHECKING:
    import httpx

    from lamina.remote_errors import raise_for_error
else:

    class _Deferred:
        """A module imported on its first attribute's use."""

        def __init__(self, name: str) -> None:
            self._name = name

        def __getattr__(self, attr: str) -> Any:
            return getattr(importlib.import_module(self._name), attr)

    httpx = _Deferred("httpx")

    def raise_for_error(response: Any) -> None:
        importlib.import_module("lamina.remote_errors").raise_for_error(response)


FINISHED = ("succeeded", "failed", "rolled_back")
#: The quotas a user account has, as the API names them (``lamina.identity.models.QUOTAS``,
#: which a unit test holds this to).
QUOTAS = ("instances", "vcpus", "memory_mib", "image_bytes", "volume_bytes")


def default_url(creds: Credentials | None = None) -> str:
    """The manager's URL: ``$LAMINA_URL``, else the credentials' ``url``, else the settings'
    (``manager.public_url`` or host and port). Raises ``InvalidRequest`` for a URL without
    ``http://`` or ``https://``, naming where it came from."""
    return _manager_url(None, creds)


def _manager_url(url: str | None, creds: Credentials | None) -> str:
    if url:
        return check_url(url, "the manager URL")
    if os.environ.get("LAMINA_URL"):
        return check_url(os.environ["LAMINA_URL"], "LAMINA_URL")
    if creds is not None and creds.url:
        return check_url(creds.url, f"the url of {creds.source or 'the credentials'}")
    from lamina.config import load_settings

    return check_url(load_settings().manager.url, "the settings' manager URL")


class Client:
    """Signs every request with the given keys, or those ``load_credentials`` finds.

    Over HTTPS the manager's certificate is always verified: against ``ca_file``, else
    ``$LAMINA_CA_FILE``, else the credentials' ``ca_file``, else the system's trust store.
    """

    def __init__(
        self,
        url: str | None = None,
        timeout: float = 60.0,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        if bool(access_key) != bool(secret_key):
            missing = "secret_key" if access_key else "access_key"
            raise ConfigError(f"the client was given keys without {missing}: give both, or none")
        creds = (
            Credentials(access_key, secret_key, source="given to the client")
            if access_key and secret_key
            else load_credentials()
        )
        self.url = _manager_url(url, creds).rstrip("/")
        self._creds = creds
        self._timeout = timeout
        self.access_key = creds.access_key if creds else None
        #: Where the keys came from (``profile 'default' of <file>``, the environment, ...).
        self.credentials_source = creds.source if creds else None
        from_creds = creds.ca_file if creds else None
        self.ca_file = ca_file or os.environ.get("LAMINA_CA_FILE") or from_creds
        from lamina.client.tls import verifying_context
        from lamina.identity.signing import LaminaAuth

        auth = LaminaAuth(creds.access_key, creds.secret_key) if creds else None
        verify = verifying_context(self.ca_file) if self.url.startswith("https:") else True
        self._http = httpx.Client(base_url=self.url, timeout=timeout, auth=auth, verify=verify)

    def close(self) -> None:
        self._http.close()

    def copy(self) -> Client:
        """Another client with its own connection, signing as this one does."""
        creds = self._creds
        return Client(
            self.url,
            self._timeout,
            access_key=creds.access_key if creds else None,
            secret_key=creds.secret_key if creds else None,
            ca_file=self.ca_file,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.HTTPError) -> BackendUnavailable:
        hint = ""
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            trusted = self.ca_file or "the system's trust store"
            hint = (
                f" (its certificate is not trusted by {trusted}: set LAMINA_CA_FILE or "
                "ca_file in the credentials file to the manager's CA certificate)"
            )
        return BackendUnavailable(
            f"cannot reach the Lamina manager at {self.url}: {exc or type(exc).__name__}{hint}"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        raise_for_error(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _take(self, key: str | None, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's ``key`` member (or the whole answer)."""
        data = self.request(method, path, **kwargs)
        return data if key is None else data[key]

    # -- system
    def health(self) -> dict[str, Any]:
        return self._take(None, "GET", "/health")

    def server_config(self) -> dict[str, Any]:
        return self._take("config", "GET", "/config")

    def reconcile(self, fix: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The differences (a dry run); with ``fix``, the ids of differences a dry run
        showed: those still found unchanged are fixed, and each one's outcome returned."""
        if fix is None:
            return self._take("differences", "GET", "/reconcile")
        if isinstance(fix, (str, bool)):
            raise TypeError("fix takes the ids of the differences to fix, from a dry run")
        return self._take("differences", "POST", "/reconcile", json={"ids": list(fix)})

    # -- hosts
    def add_host(self, name: str, address: str, reserved_memory_mib: int | None = None) -> Any:
        body: dict[str, Any] = {"name": name, "address": address}
        if reserved_memory_mib is not None:
            body["reserved_memory_mib"] = reserved_memory_mib
        return self.request("POST", "/hosts", json=body)

    def hosts(self) -> list[dict[str, Any]]:
        return self._take("hosts", "GET", "/hosts")

    def host(self, ref: str) -> dict[str, Any]:
        return self._take("host", "GET", f"/hosts/{ref}")

    def host_token(self, ref: str) -> str:
        return self._take("token", "POST", f"/hosts/{ref}/token")

    def disable_host(self, ref: str, reason: str | None = None) -> dict[str, Any]:
        """No new placements on the host; answers the host."""
        return self._take("host", "POST", f"/hosts/{ref}/disable", json={"reason": reason})

    def enable_host(self, ref: str) -> dict[str, Any]:
        return self._take("host", "POST", f"/hosts/{ref}/enable")

    def remove_host(self, ref: str) -> dict[str, Any]:
        return self._take("host", "DELETE", f"/hosts/{ref}")

    # -- instances
    def create_instance(self, **fields: Any) -> dict[str, Any]:
        body = {k: v for k, v in fields.items() if v is not None}
        return self.request("POST", "/instances", json=body)

    def instances(self, detail: bool = False, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        path = "/instances/detail" if detail else "/instances"
        return self._take("instances", "GET", path, params=params)

    def instance(self, ref: str) -> dict[str, Any]:
        return self._take("instance", "GET", f"/instances/{ref}")

    def instance_action(self, ref: str, action: str, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else None
        return self._take("job", "POST", f"/instances/{ref}/{action}", params=params)

    def migrate_instance(
        self, ref: str, host: str | None = None, mode: str = "auto"
    ) -> dict[str, Any]:
        """Move an instance to ``host`` (None: the scheduler's choice); answers the job."""
        body = {"host": host, "mode": mode}
        return self._take("job", "POST", f"/instances/{ref}/migrate", json=body)

    def evacuate_host(self, ref: str) -> dict[str, Any]:
        """Move every instance of a host away; answers the job (its state: the report)."""
        return self._take("job", "POST", f"/hosts/{ref}/evacuate")

    def delete_instance(self, ref: str, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else None
        return self._take("job", "DELETE", f"/instances/{ref}", params=params)

    # -- checkpoints
    def create_checkpoint(self, ref: str, name: str | None = None) -> dict[str, Any]:
        """Checkpoint a running or paused layered instance: ``{"checkpoint", "job"}``."""
        return self._take(None, "POST", f"/instances/{ref}/checkpoints", json={"name": name})

    def checkpoints(self, ref: str | None = None) -> list[dict[str, Any]]:
        """The checkpoints of instance ``ref``, or of every instance you may see."""
        path = f"/instances/{ref}/checkpoints" if ref else "/checkpoints"
        return list(self._take("checkpoints", "GET", path))

    def checkpoint(self, ref: str, name: str) -> dict[str, Any]:
        return self._take("checkpoint", "GET", f"/instances/{ref}/checkpoints/{name}")

    def delete_checkpoint(self, ref: str, name: str) -> dict[str, Any]:
        return self._take("job", "DELETE", f"/instances/{ref}/checkpoints/{name}")

    def restore_checkpoint(self, ref: str, name: str, host: str | None = None) -> dict[str, Any]:
        """Restore instance ``ref`` from its checkpoint ``name`` (on ``host``): the job."""
        path = f"/instances/{ref}/checkpoints/{name}/restore"
        return self._take("job", "POST", path, json={"host": host})

    def console(self, ref: str, offset: int = 0) -> dict[str, Any]:
        return self._take("console", "GET", f"/instances/{ref}/console", params={"offset": offset})

    def update_config(self, ref: str, items: dict[str, str | None]) -> dict[str, Any]:
        """Set configuration items of an instance (a value of None removes one)."""
        return self._take("config", "PATCH", f"/instances/{ref}/config", json={"items": items})

    def expose(
        self,
        ref: str,
        guest_port: int,
        host_port: int | None = None,
        bind: str = "127.0.0.1",
        network: str | None = None,
    ) -> dict[str, Any]:
        """Publish a port of an instance on its host; answers ``forward`` and ``job``."""
        body = {"guest_port": guest_port, "host_port": host_port, "bind": bind, "network": network}
        body = {k: v for k, v in body.items() if v is not None}
        return self._take(None, "POST", f"/instances/{ref}/forwards", json=body)

    def unexpose(self, ref: str, forward: str | int) -> dict[str, Any]:
        """Stop publishing a port (its forward's id or the guest port)."""
        return self._take(None, "DELETE", f"/instances/{ref}/forwards/{forward}")

    def forwards(self, ref: str) -> list[dict[str, Any]]:
        return self._take("forwards", "GET", f"/instances/{ref}/forwards")

    # -- networks and DNS
    def create_network(self, name: str, cidr: str, **fields: Any) -> dict[str, Any]:
        """Fields: mode (nat, isolated), visibility, vlan, description."""
        body = {"name": name, "cidr": cidr, **{k: v for k, v in fields.items() if v is not None}}
        return self._take("network", "POST", "/networks", json=body)

    def networks(self) -> list[dict[str, Any]]:
        return self._take("networks", "GET", "/networks")

    def network(self, ref: str) -> dict[str, Any]:
        return self._take("network", "GET", f"/networks/{ref}")

    def update_network(self, ref: str, **fields: Any) -> dict[str, Any]:
        body = {k: v for k, v in fields.items() if v is not None}
        return self._take("network", "PATCH", f"/networks/{ref}", json=body)

    def delete_network(self, ref: str) -> dict[str, Any]:
        return self._take("job", "DELETE", f"/networks/{ref}")

    def dns_records(self, network: str) -> list[dict[str, Any]]:
        return self._take("records", "GET", f"/networks/{network}/records")

    def add_dns_record(self, network: str, name: str, type_: str, value: str) -> dict[str, Any]:
        """Answers ``record`` and ``jobs`` (the hosts being told)."""
        body = {"name": name, "type": type_, "value": value}
        return self._take(None, "POST", f"/networks/{network}/records", json=body)

    def delete_dns_record(self, network: str, record_id: str) -> dict[str, Any]:
        return self._take(None, "DELETE", f"/networks/{network}/records/{record_id}")

    # -- jobs
    def job(self, job_id: str) -> dict[str, Any]:
        return self._take("job", "GET", f"/jobs/{job_id}")

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v not in (None, False)}
        return self._take("jobs", "GET", "/jobs", params=params)

    def wait_job(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        interval: float = 0.25,
    ) -> dict[str, Any]:
        """Poll a job until it finishes; return its final record."""
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["status"] in FINISHED:
                return job
            if until is not None and time.monotonic() > until:
                raise Timeout(f"job {job_id} still {job['status']} after {timeout:g}s")
            time.sleep(interval)

    # -- channels and appliances
    def add_channel(self, url: str, key: str) -> dict[str, Any]:
        return self._take("channel", "POST", "/channels", json={"url": url, "key": key})

    def channels(self) -> list[dict[str, Any]]:
        return self._take("channels", "GET", "/channels")

    def channel(self, ref: str) -> dict[str, Any]:
        """A channel by id, feed URL or title, with the appliances it lists (``items``)."""
        return self._take("channel", "GET", f"/channels/{_segment(ref)}")

    def refresh_channel(self, ref: str) -> dict[str, Any]:
        """The channel and ``changes``: what is new or updated since the last refresh."""
        return self._take(None, "POST", f"/channels/{_segment(ref)}/refresh")

    def remove_channel(self, ref: str) -> dict[str, Any]:
        return self._take("channel", "DELETE", f"/channels/{_segment(ref)}")

    def appliances(self, installed: bool = False) -> list[dict[str, Any]]:
        params = {"installed": "true"} if installed else {}
        return self._take("appliances", "GET", "/appliances", params=params)

    def appliance(self, ref: str, version: str | None = None) -> dict[str, Any]:
        """An appliance by name (or an installed one's id): its ``versions`` and what the
        definition of one (``version``, default the newest installed, else offered) holds."""
        params = {"version": version} if version else {}
        return self._take("appliance", "GET", f"/appliances/{_segment(ref)}", params=params)

    def install_appliance(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Start installing; answers ``job`` and ``appliances`` (those it installs)."""
        body = {"name": name, "version": version}
        return self._take(None, "POST", "/appliances/install", json=body)

    def capture_appliance(
        self, instance: str, name: str, version: str | None = None
    ) -> dict[str, Any]:
        """Start capturing a stopped layered instance; answers ``job`` and ``appliance``."""
        body = {"instance": instance, "name": name, "version": version}
        return self._take(None, "POST", "/appliances/capture", json=body)

    def deploy_appliance(
        self,
        ref: str,
        name: str,
        variables: dict[str, str] | None = None,
        memory_mib: int | None = None,
        vcpus: int | None = None,
        networks: list[dict[str, Any]] | None = None,
        group: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Create an instance of an installed appliance (id, or name: its newest installed
        version unless ``version``); answers ``instance``, ``job``, ``appliance`` and the
        resolved ``variables``. ``networks``: ``[{"network": name, "ip": address or None}]``,
        the first the primary; None: the default network. An appliance a channel offers but
        that is not installed: ``InvalidState`` with ``details["installable"]``."""
        body: dict[str, Any] = {"name": name, "vars": variables or {}}
        extra = {
            "memory_mib": memory_mib,
            "vcpus": vcpus,
            "networks": networks,
            "group": group,
            "version": version,
        }
        body.update({k: v for k, v in extra.items() if v is not None})
        return self._take(None, "POST", f"/appliances/{_segment(ref)}/deploy", json=body)

    def remove_appliance(self, ref: str, version: str | None = None) -> dict[str, Any]:
        """Remove an installed appliance by id, or by name (and ``version`` when several
        versions are installed)."""
        params = {"version": version} if version else {}
        return self._take("appliance", "DELETE", f"/appliances/{_segment(ref)}", params=params)

    # -- volumes and snapshots (each taken by its id or its name)
    def create_volume(
        self,
        size_bytes: int | None = None,
        snapshot: str | None = None,
        comment: str = "",
        host: str | None = None,
        clone: bool = True,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Answer ``{"volume", "job"}``: the volume comes back ``creating``. ``snapshot``:
        a snapshot's id or name."""
        body: dict[str, Any] = {"comment": comment, "clone": clone}
        optional = (("size_bytes", size_bytes), ("snapshot", snapshot), ("host", host))
        for key, value in (*optional, ("name", name)):
            if value is not None:
                body[key] = value
        return self.request("POST", "/volumes", json=body)

    def volumes(
        self,
        ids: list[str] | None = None,
        status: str | None = None,
        instance: str | None = None,
        name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Volumes, oldest first: ``ids`` (ids or names) only, those of ``status``, of
        ``name``, the one attached to ``instance`` (id or name)."""
        chosen = (("status", status), ("instance", instance), ("name", name))
        params: dict[str, Any] = {k: v for k, v in chosen if v}
        if ids:
            params["id"] = list(ids)
        return self._take("volumes", "GET", "/volumes", params=params)

    def volume(self, volume_id: str) -> dict[str, Any]:
        return self._take("volume", "GET", f"/volumes/{_segment(volume_id)}")

    def delete_volume(self, volume_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/volumes/{_segment(volume_id)}")

    def extend_volume(self, volume_id: str, size_bytes: int) -> dict[str, Any]:
        body = {"size_bytes": size_bytes}
        return self.request("POST", f"/volumes/{_segment(volume_id)}/extend", json=body)

    def attach_volume(
        self, volume_id: str, instance: str, device: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"instance": instance}
        if device:
            body["device"] = device
        return self.request("PUT", f"/volumes/{_segment(volume_id)}/attachment", json=body)

    def detach_volume(self, volume_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/volumes/{_segment(volume_id)}/attachment")

    def create_snapshot(
        self, volume_id: str, comment: str = "", name: str | None = None
    ) -> dict[str, Any]:
        """Answer ``{"snapshot", "job"}``: the snapshot comes back ``pending``."""
        body: dict[str, Any] = {"volume": volume_id, "comment": comment}
        if name is not None:
            body["name"] = name
        return self.request("POST", "/snapshots", json=body)

    def snapshots(
        self,
        ids: list[str] | None = None,
        status: str | None = None,
        volume: str | None = None,
        name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Snapshots, oldest first: ``ids`` (ids or names) only, those of ``status``, of
        ``name``, of ``volume`` (id or name)."""
        chosen = (("status", status), ("volume", volume), ("name", name))
        params: dict[str, Any] = {k: v for k, v in chosen if v}
        if ids:
            params["id"] = list(ids)
        return self._take("snapshots", "GET", "/snapshots", params=params)

    def snapshot(self, snapshot_id: str) -> dict[str, Any]:
        return self._take("snapshot", "GET", f"/snapshots/{_segment(snapshot_id)}")

    def delete_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/snapshots/{_segment(snapshot_id)}")

    # -- sharing
    def set_visibility(self, ref: str, visibility: str) -> dict[str, Any]:
        return self._take("instance", "PATCH", f"/instances/{ref}", json={"visibility": visibility})

    def grants(self, ref: str) -> list[dict[str, Any]]:
        return self._take("grants", "GET", f"/instances/{ref}/grants")

    def share(self, ref: str, user: str, access: str = "read") -> dict[str, Any]:
        body = {"user": user, "access": access}
        return self._take("grant", "POST", f"/instances/{ref}/grants", json=body)

    def unshare(self, ref: str, user: str) -> dict[str, Any]:
        return self._take("revoked", "DELETE", f"/instances/{ref}/grants/{user}")

    # -- users (admins)
    def whoami(self) -> dict[str, Any]:
        return self._take("user", "GET", "/whoami")

    def users(self, **filters: str) -> list[dict[str, Any]]:
        return self._take("users", "GET", "/users", params=filters)

    def user(self, access_key: str) -> dict[str, Any]:
        return self._take("user", "GET", f"/users/{access_key}")

    def add_user(
        self,
        access_key: str,
        email: str,
        role: str = "member",
        quotas: dict[str, int | None] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"access_key": access_key, "email": email, "role": role}
        if quotas:
            body["quotas"] = quotas
        return self.request("POST", "/users", json=body)

    def update_user(self, user: str, **fields: Any) -> dict[str, Any]:
        """Change ``user``'s fields (``access_key`` renames them)."""
        body = {k: v for k, v in fields.items() if v is not None}
        return self._take("user", "PUT", f"/users/{user}", json=body)

    def delete_user(self, access_key: str) -> dict[str, Any]:
        return self._take("user", "DELETE", f"/users/{access_key}")

    def clean_users(self) -> list[str]:
        return self._take("deleted", "DELETE", "/users")

    def create_key(self, access_key: str) -> dict[str, Any]:
        return self._take("key", "POST", f"/users/{access_key}/keys")

    def revoke_key(self, access_key: str, key_id: str) -> dict[str, Any]:
        return self._take("key", "DELETE", f"/users/{access_key}/keys/{key_id}")

    # -- audit (admins)
    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        """Recorded state-changing requests, newest first; filters: ``user`` (access key),
        ``since``/``until`` (ISO 8601 or a span back such as ``1h``), ``method``, ``limit``."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._take("events", "GET", "/audit", params=params)

    def audit_event(self, event_id: int) -> dict[str, Any]:
        """One recorded request, by its id."""
        return self._take("event", "GET", f"/audit/{event_id}")

    # -- images (VISOR's programming API, table 4.9, as streaming calls)
    # Every call that takes an image takes its id or its name (the caller's own image of
    # that name first; ``Ambiguous`` listing the candidates when several may be meant).
    def head_image(self, image_id: str) -> dict[str, Any]:
        """An image's detailed metadata (by id or name), read from the ``X-Image-Meta-*``
        headers of ``HEAD /images/{ref}``. Raises ``NotFound`` for an unknown or invisible
        image, ``Ambiguous`` for a name several images carry."""
        path = f"/images/{_segment(image_id)}"
        try:
            response = self._http.request("HEAD", path)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code == 404:
            raise NotFound(f"image {image_id!r} does not exist", image=image_id)
        if response.status_code == 403:
            # A HEAD answer has no body to carry the reason.
            raise Forbidden(f"HEAD /images/{image_id} was refused (403): check your keys")
        if response.status_code == 400:
            # Nor the candidates of an ambiguous name: a GET of the same image's history
            # (a read with no side effect) answers the same error with its body.
            self._take("history", "GET", f"{path}/history")
        raise_for_error(response)
        return meta_from_headers(response.headers)

    def image(self, image_id: str) -> dict[str, Any]:
        """An image's detailed metadata (``HEAD``: no file is sent)."""
        return self.head_image(image_id)

    def images(
        self,
        detail: bool = False,
        sort: str | None = None,
        dir: str | None = None,  # VISOR's name for the sort direction
        limit: int | None = None,
        marker: str | None = None,
        where: Mapping[str, Any] | None = None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Brief (or, with ``detail``, full) metadata of the images the caller may see,
        filtered on any attribute (``format="iso"``, ``os="debian"``; ``where`` holds filters
        whose names are taken by this method's parameters), sorted by ``sort`` in direction
        ``dir`` (``asc``/``desc``). With ``limit`` one page after ``marker`` (an image id) is
        returned; without it every page is fetched. No match is an empty list (the manager
        answers VISOR's 404 "no images were found")."""
        path = "/images/detail" if detail else "/images"
        chosen = {**(where or {}), **filters}
        params = {k: str(v) for k, v in chosen.items() if v is not None}
        params.update({k: v for k, v in (("sort", sort), ("dir", dir)) if v is not None})

        def page(size: int, after: str | None) -> list[dict[str, Any]]:
            query = {**params, "limit": str(size), **({"marker": after} if after else {})}
            try:
                return self._take("images", "GET", path, params=query)
            except NotFound:
                return []

        if limit is not None:
            return page(limit, marker)
        found: list[dict[str, Any]] = []
        while True:
            rows = page(LIST_PAGE, marker)
            found += rows
            if len(rows) < LIST_PAGE:
                return found
            marker = rows[-1]["id"]

    def add_image(
        self,
        meta: Mapping[str, Any],
        file: str | os.PathLike[str] | IO[bytes] | None = None,
        location: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Register an image (``POST /images``) from ``meta`` (``X-Image-Meta-<key>``
        headers), with its ``file`` streamed in the body, or a ``location`` (an http
        store), or neither (the image stays ``locked``). Returns its metadata.

        The file is sent unsigned in 1 MiB chunks, never whole in memory; its SHA-256 is
        declared up front (``X-Image-Meta-Sha256``), so unless ``meta`` gives ``sha256`` the
        file is read once before the upload to compute it (about 0.7 s per GiB here).
        ``progress(sent, total)`` is called after each chunk. Raises ``InvalidRequest`` for
        bad metadata, ``Conflict`` if the store has the file already."""
        return self._take("image", "POST", "/images", **_upload(meta, file, location, progress))

    def update_image(
        self,
        image_id: str,
        meta: Mapping[str, Any] | None = None,
        file: str | os.PathLike[str] | IO[bytes] | None = None,
        location: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Change an image's metadata and/or give it its file or location
        (``PUT /images/{id}``), streamed as ``add_image`` does. Only a ``locked`` or
        ``error`` image takes a file: ``InvalidState`` (409) otherwise."""
        kwargs = _upload(meta or {}, file, location, progress)
        return self._take("image", "PUT", f"/images/{_segment(image_id)}", **kwargs)

    def get_image(
        self,
        image_id: str,
        dest: str | os.PathLike[str] | IO[bytes],
        progress: Progress | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Download an image's file to ``dest`` (a file path, a directory -- the file is then
        named ``<id>.<format>`` -- or a binary stream), in chunks, never whole in memory;
        returns its metadata. The SHA-256 of what arrived is checked against the image's.

        A path that exists is refused with ``Conflict`` (VISOR's 409 "already downloaded")
        unless ``resume``: then only the missing end is fetched (``Range: bytes=<size>-``)
        and the whole file is verified. A file that does not match is removed and
        ``ChecksumMismatch`` raised; a broken connection raises ``BackendUnavailable`` and
        leaves the partial file for ``resume``."""
        if not isinstance(dest, (str, os.PathLike)):
            return self._download(image_id, dest, 0, hashlib.sha256(), progress, None)
        target = Path(dest)
        if target.is_dir():
            target = target / image_filename(self.head_image(image_id))
        have = target.stat().st_size if target.exists() else None
        if have is not None and not resume:
            raise Conflict(
                f"image file already downloaded to {target} (resume it, or remove it first)",
                path=str(target),
            )
        digest = hashlib.sha256()
        if not have:
            with target.open("wb") as out:
                return self._download(image_id, out, 0, digest, progress, target)
        head = self.head_image(image_id)
        size = int(head.get("size") or 0)
        if have > size:
            raise Conflict(
                f"{target} has {have} bytes, more than image {image_id}'s {size}: "
                "it is not a partial download of it",
                path=str(target),
            )
        with target.open("rb") as part:
            while block := part.read(CHUNK):
                digest.update(block)
        if have == size:
            _verify(digest, head, target)
            if progress is not None:
                progress(size, size)
            return head
        with target.open("ab") as out:
            return self._download(image_id, out, have, digest, progress, target)

    def _download(
        self,
        image_id: str,
        out: IO[bytes],
        offset: int,
        digest: Any,
        progress: Progress | None,
        target: Path | None,
    ) -> dict[str, Any]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        done = offset
        total: int | None = None
        try:
            path = f"/images/{_segment(image_id)}"
            with self._http.stream("GET", path, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_error(response)
                meta = meta_from_headers(response.headers)
                total = int(meta["size"]) if "size" in meta else None
                if offset and response.status_code != 206:
                    # The whole file came back (no range support): start again.
                    out.seek(0)
                    out.truncate()
                    digest, done = hashlib.sha256(), 0
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except httpx.HTTPError as exc:
            if done <= offset:
                raise self._unreachable(exc) from None
            raise BackendUnavailable(
                f"the download of image {image_id} broke off after {done} bytes ({exc}): "
                "resume it to fetch the rest"
            ) from None
        if total is not None and done != total:
            raise BackendUnavailable(
                f"the download of image {image_id} stopped at {done} of {total} bytes: "
                "resume it to fetch the rest"
            )
        _verify(digest, meta, target)
        return meta

    def delete_image(self, image_id: str) -> dict[str, Any]:
        """Remove an image's metadata and file; returns the metadata it had (VISOR: so it
        can be registered again)."""
        return self._take("image", "DELETE", f"/images/{_segment(image_id)}")

    def image_history(self, image_id: str) -> list[dict[str, Any]]:
        """Who did what to an image, and when, oldest first."""
        return self._take("history", "GET", f"/images/{_segment(image_id)}/history")


# -- images: the pure parts ------------------------------------------------------------------


def _segment(ref: str) -> str:
    """An id or a name as one path segment (a name may hold spaces, ``?`` or ``#``; a
    channel's URL has slashes)."""
    return quote(ref, safe="")


#: ``progress(bytes_done, total_bytes_or_None)``, called as an image file moves.
Progress = Callable[[int, int | None], None]
CHUNK = 1024 * 1024
LIST_PAGE = 1000
META_PREFIX = "x-image-meta-"
_INTEGERS = ("size", "access_count")


class ChecksumMismatch(LaminaError):
    """A downloaded file whose SHA-256 is not the image's."""

    code = "checksum_mismatch"


def meta_headers(meta: Mapping[str, Any]) -> dict[str, str]:
    """``{"name": "Debian 12", "os_version": 12}`` as ``X-Image-Meta-Name: Debian 12``,
    ``X-Image-Meta-Os-Version: 12`` (the server reads ``-`` as ``_``; ``None`` is skipped).
    Values must be printable ASCII: HTTP headers carry nothing else safely."""
    headers: dict[str, str] = {}
    for key, value in meta.items():
        if value is None:
            continue
        name = str(key).strip().lower()
        if not name or not all(c.isalnum() or c in "_-." for c in name) or not name.isascii():
            raise InvalidRequest(f"attribute name {key!r} must be letters, digits or _.-")
        text = str(value)
        if not text.isascii() or any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise InvalidRequest(
                f"attribute {name}: {text!r} must be printable ASCII (it travels as an "
                "X-Image-Meta header)"
            )
        headers[f"X-Image-Meta-{name.replace('_', '-').title()}"] = text
    return headers


def meta_from_headers(headers: Mapping[str, str]) -> dict[str, Any]:
    """The image metadata in a response's ``X-Image-Meta-*`` headers: names lower-cased with
    ``_`` for ``-``, ``size``/``access_count`` as integers, times as ISO 8601 (as in JSON)."""
    meta: dict[str, Any] = {}
    for name, value in headers.items():
        lower = name.lower()
        if not lower.startswith(META_PREFIX):
            continue
        key = lower[len(META_PREFIX) :].replace("-", "_")
        parsed: Any = value
        if key in _INTEGERS and value.isdigit():
            parsed = int(value)
        elif key.endswith("_at"):
            try:
                parsed = datetime.fromisoformat(value).isoformat()
            except ValueError:
                pass
        meta[key] = parsed
    return meta


def image_filename(meta: Mapping[str, Any]) -> str:
    """The name a downloaded image gets in a directory: ``<id>.<format>`` (as VISOR)."""
    return f"{meta['id']}.{meta['format']}" if meta.get("format") else str(meta["id"])


def file_sha256(stream: IO[bytes]) -> str:
    """SHA-256 of the rest of ``stream``, read in 1 MiB blocks (hashlib uses the CPU's SHA
    instructions where there are some: about 0.7 s per GiB on this project's machines)."""
    digest = hashlib.sha256()
    while block := stream.read(CHUNK):
        digest.update(block)
    return digest.hexdigest()


def _verify(digest: Any, meta: Mapping[str, Any], target: Path | None) -> None:
    expected = str(meta.get("sha256") or "").lower()
    if not expected or digest.hexdigest() == expected:
        return
    where = ""
    if target is not None:
        target.unlink(missing_ok=True)
        where = f"; {target} was removed"
    raise ChecksumMismatch(
        f"the file of image {meta.get('id')} arrived with SHA-256 {digest.hexdigest()}, "
        f"not {expected}{where}: download it again",
        image=meta.get("id"),
    )


def _upload(
    meta: Mapping[str, Any],
    file: str | os.PathLike[str] | IO[bytes] | None,
    location: str | None,
    progress: Progress | None,
) -> dict[str, Any]:
    """The httpx arguments of a POST or PUT of ``meta`` with a file streamed unsigned."""
    fields = dict(meta)
    if location is not None:
        fields["location"] = location
    if file is None:
        return {"headers": meta_headers(fields)}
    if fields.get("location"):
        raise InvalidRequest("give the image's file or its location, not both")
    stream: IO[bytes] = Path(file).open("rb") if isinstance(file, (str, os.PathLike)) else file
    owned = stream is not file
    try:
        start = stream.tell() if stream.seekable() else None
        total = None
        if start is not None:
            total = stream.seek(0, os.SEEK_END) - start
            stream.seek(start)
        if not fields.get("sha256") and not fields.get("checksum"):
            if start is None:
                raise InvalidRequest(
                    "a stream that cannot seek must come with its sha256 in the metadata: "
                    "it is declared before the upload"
                )
            # Declared up front, so read once before the upload (hashlib with SHA-NI does
            # about 1.5 GiB/s; it also warms the page cache for the upload's own read).
            fields["sha256"] = file_sha256(stream)
            stream.seek(start)
    except BaseException:
        if owned:
            stream.close()
        raise
    headers = {
        **meta_headers(fields),
        "Content-Type": "application/octet-stream",
    }
    if total is not None:
        headers["Content-Length"] = str(total)
        headers["X-Image-Meta-Size"] = str(total)
    name = getattr(stream, "name", "the stream")
    return {"headers": headers, "content": _chunks(stream, owned, total, progress, name)}


def _chunks(
    stream: IO[bytes], owned: bool, total: int | None, progress: Progress | None, name: str
) -> Iterator[bytes]:
    done = 0
    try:
        if progress is not None:
            progress(0, total)
        while chunk := stream.read(CHUNK if total is None else min(CHUNK, total - done)):
            done += len(chunk)
            yield chunk
            if progress is not None:
                progress(done, total)
        if total is not None and done != total:
            raise InvalidRequest(f"{name} shrank while it was uploaded ({done} of {total} bytes)")
    finally:
        if owned:
            stream.close()
