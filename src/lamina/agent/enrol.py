"""Agent side of enrolment: trade the one-time token for a certificate.

The token that ``lamina host add`` prints is ``<secret>.<CA fingerprint>``: the agent fetches
the manager's CA certificate, refuses it unless its SHA-256 matches the fingerprint (so a
man in the middle cannot hand it another CA), then sends a CSR with the secret.

With an ``https://`` manager URL the agent cannot check the manager's certificate before it
has the CA: ``/ca.pem`` is fetched without verification (nothing secret is sent, and only the
fingerprint makes the answer trusted), then the enrolment request, which carries the secret,
goes over a connection verified against that CA (``manager.tls = "ca"``) or, for a
certificate the administrator gave (``"files"``), the system's trust store.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from pathlib import Path

import httpx

from lamina.agent.migration_tls import write_pki
from lamina.errors import BackendUnavailable, Forbidden
from lamina.remote_errors import raise_for_error
from lamina.wire.protocol import EnrolRequest, EnrolResponse, split_token
from lamina.wire.tls import TLSFiles, fingerprint, key_pem, make_csr, new_key, write_private

log = logging.getLogger(__name__)


def enrol(
    manager_url: str, token: str, name: str, files: TLSFiles, pki: Path | None = None
) -> EnrolResponse:
    """Enrol with ``token``: the agent's certificate into ``files`` and, with ``pki``, the
    host's migration certificate (a key of its own) into that folder
    (``lamina.agent.migration_tls``)."""
    _, ca_fp = split_token(token)
    try:
        with httpx.Client(base_url=manager_url, timeout=30, verify=False) as unverified:
            response = unverified.get("/ca.pem")
        raise_for_error(response)
        ca_pem = response.content
        if not hmac.compare_digest(fingerprint(ca_pem), ca_fp):
            raise Forbidden(
                f"the CA certificate served by {manager_url} does not match the token's "
                "fingerprint; refusing to enrol"
            )
        # The system's trust store and the pinned CA: either may vouch for the manager.
        trust = ssl.create_default_context()
        trust.load_verify_locations(cadata=ca_pem.decode())
        key = new_key()
        migration_key = new_key() if pki is not None else None
        request = EnrolRequest(
            token=token,
            csr=make_csr(key, name).decode(),
            migration_csr=make_csr(migration_key, name).decode() if migration_key else None,
        )
        with httpx.Client(base_url=manager_url, timeout=30, verify=trust) as http:
            response = http.post("/hosts/enrol", json=request.model_dump())
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"cannot enrol with the manager at {manager_url}: {exc}") from None
    raise_for_error(response)
    result = EnrolResponse.model_validate(response.json())
    write_private(files.key, key_pem(key))
    write_private(files.cert, result.certificate.encode())
    write_private(files.ca, ca_pem)
    if pki is not None and migration_key is not None:
        if result.migration_certificate:
            write_pki(pki, ca_pem, result.migration_certificate.encode(), key_pem(migration_key))
        else:
            log.warning("the manager issued no migration certificate: this host cannot migrate")
    log.info("enrolled as host %s (%s)", result.name, result.host_id)
    return result


MANAGER_FILE = "manager.url"


def remember_manager(agent_dir: Path, given: str | None, default: str) -> str:
    """The manager this agent works for, whose blob route it fetches the repository's files
    from: the URL given now (``--manager``), else the one recorded at enrolment
    (``<agent dir>/manager.url``), else the settings' ``manager.url``; recorded for next
    time."""
    path = agent_dir / MANAGER_FILE
    recorded = path.read_text().strip() if path.is_file() else None
    url = (given or recorded or default).rstrip("/")
    if url != recorded:
        write_private(path, f"{url}\n".encode())
    return url
