"""The Python client of Lamina's REST API. The CLI is built on it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from lamina.errors import BackendUnavailable, Timeout
from lamina.remote_errors import raise_for_error

FINISHED = ("succeeded", "failed", "rolled_back")


def default_url() -> str:
    url = os.environ.get("LAMINA_URL")
    if url:
        return url
    from lamina.config import load_settings

    return load_settings().manager.url


class Client:
    def __init__(self, url: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or default_url()).rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        # The identity issue signs requests here, in this one place.
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                f"cannot reach the Lamina manager at {self.url}: {exc or type(exc).__name__}"
            ) from None
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

    def reconcile(self, fix: bool = False) -> list[dict[str, Any]]:
        return self._take("differences", "POST" if fix else "GET", "/reconcile")

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

    def delete_instance(self, ref: str, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else None
        return self._take("job", "DELETE", f"/instances/{ref}", params=params)

    def console(self, ref: str, offset: int = 0) -> dict[str, Any]:
        return self._take("console", "GET", f"/instances/{ref}/console", params={"offset": offset})

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
