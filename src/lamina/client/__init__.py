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

    # -- system
    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")

    def server_config(self) -> dict[str, Any]:
        return self.request("GET", "/config")["config"]

    def reconcile(self, fix: bool = False) -> list[dict[str, Any]]:
        return self.request("POST" if fix else "GET", "/reconcile")["differences"]

    # -- hosts
    def add_host(self, name: str, address: str, reserved_memory_mib: int | None = None) -> Any:
        body: dict[str, Any] = {"name": name, "address": address}
        if reserved_memory_mib is not None:
            body["reserved_memory_mib"] = reserved_memory_mib
        return self.request("POST", "/hosts", json=body)

    def hosts(self) -> list[dict[str, Any]]:
        return self.request("GET", "/hosts")["hosts"]

    def host(self, ref: str) -> dict[str, Any]:
        return self.request("GET", f"/hosts/{ref}")["host"]

    def host_token(self, ref: str) -> str:
        return self.request("POST", f"/hosts/{ref}/token")["token"]

    def remove_host(self, ref: str) -> dict[str, Any]:
        return self.request("DELETE", f"/hosts/{ref}")["host"]

    # -- instances
    def create_instance(self, **fields: Any) -> dict[str, Any]:
        body = {k: v for k, v in fields.items() if v is not None}
        return self.request("POST", "/instances", json=body)

    def instances(self, detail: bool = False, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        path = "/instances/detail" if detail else "/instances"
        return self.request("GET", path, params=params)["instances"]

    def instance(self, ref: str) -> dict[str, Any]:
        return self.request("GET", f"/instances/{ref}")["instance"]

    def instance_action(self, ref: str, action: str, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else None
        return self.request("POST", f"/instances/{ref}/{action}", params=params)["job"]

    def delete_instance(self, ref: str) -> dict[str, Any]:
        return self.request("DELETE", f"/instances/{ref}")["job"]

    def console(self, ref: str, offset: int = 0) -> dict[str, Any]:
        return self.request("GET", f"/instances/{ref}/console", params={"offset": offset})[
            "console"
        ]

    # -- jobs
    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/jobs/{job_id}")["job"]

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v not in (None, False)}
        return self.request("GET", "/jobs", params=params)["jobs"]

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
