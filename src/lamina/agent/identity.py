"""The deployment this agent works for (see ``lamina.db.deployment``).

The manager names its deployment on every call (``X-Lamina-Deployment``); the agent keeps the
first id it is given in ``<agent data dir>/deployment`` and tags everything it makes with it
(libvirt domains' metadata, its records of tgt exports, bridges' ``ifalias``). A call naming
another deployment is refused: the agent's objects would otherwise carry two owners' tags.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

from lamina.errors import Conflict, InvalidRequest
from lamina.wire.protocol import DEPLOYMENT_ID

log = logging.getLogger(__name__)
FILE = "deployment"


class DeploymentIdentity:
    """The deployment id of one agent, stored under its data directory."""

    def __init__(self, root: Path) -> None:
        self.path = root / FILE
        self._lock = threading.Lock()
        self._id: str | None = None
        try:
            stored = self.path.read_text().strip()
        except FileNotFoundError:
            stored = ""
        if stored and re.fullmatch(DEPLOYMENT_ID, stored):
            self._id = stored
        elif stored:
            log.error("ignoring %s: %r is not a deployment id", self.path, stored)

    @property
    def id(self) -> str | None:
        """The id, or None before any manager named one."""
        return self._id

    def learn(self, deployment: str) -> None:
        """Keep ``deployment`` if none is known yet. Raises ``InvalidRequest`` for a
        malformed id, ``Conflict`` when this agent already works for another deployment."""
        if not re.fullmatch(DEPLOYMENT_ID, deployment):
            raise InvalidRequest("malformed deployment id", deployment=deployment[:64])
        if self._id == deployment:
            return
        with self._lock:
            if self._id is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(deployment + "\n")
                os.replace(tmp, self.path)
                self._id = deployment
                log.info("this agent works for deployment %s", deployment)
                return
        if self._id != deployment:
            raise Conflict(
                f"this agent works for deployment {self._id}, not {deployment}; its guests, "
                f"targets and bridges are tagged with {self._id}. Remove {self.path} to hand "
                "it to another deployment (what it made stays tagged with the old one)",
                deployment=self._id,
            )
