"""Instance tokens: ``<instance id>.<hex HMAC-SHA256 of the id>`` under a key derived from
the managers' ``secret.key``. Nothing is stored: any manager can make or check a token, a
token names the instance it proves, and guessing one is guessing a 256-bit MAC."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from lamina.compute.lifecycle import InstanceLifecycle
from lamina.compute.models import Instance
from lamina.errors import AuthenticationFailed
from lamina.identity.secretbox import SecretBox

PURPOSE = "lamina instance token v1"


def instance_token(box: SecretBox, instance_id: str) -> str:
    mac = hmac.new(box.derive(PURPOSE), instance_id.encode(), hashlib.sha256).hexdigest()
    return f"{instance_id}.{mac}"


def token_instance(box: SecretBox, token: str) -> str:
    """The instance a token proves; ``AuthenticationFailed`` (403 ``auth_bad_token``) for a
    token that is malformed or not Lamina's."""
    instance_id, dot, mac = token.strip().rpartition(".")
    if not dot or not instance_id or len(mac) != 64:
        raise AuthenticationFailed("auth_bad_token", "the instance token is malformed")
    if not hmac.compare_digest(instance_token(box, instance_id), f"{instance_id}.{mac}"):
        raise AuthenticationFailed("auth_bad_token", "the instance token is not valid")
    return instance_id


def token_file(services: Any, instance: Instance) -> dict[str, str]:
    """The config disk of a layered instance carries its token (``token``): what its guest
    shows the configuration service."""
    return {"token": f"{instance_token(services.box, instance.id)}\n"}


def register_guest_lifecycle(lifecycle: InstanceLifecycle) -> None:
    lifecycle.config_files.append(token_file)
