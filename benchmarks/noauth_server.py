"""A manager whose authentication is replaced by a fixed administrator: the baseline of
benchmarks/auth.py, never a way to run Lamina. Settings come from the environment, as for
``lamina serve``."""

from __future__ import annotations

import sys

import uvicorn
from sqlalchemy import select

from lamina.api.app import create_app
from lamina.api.auth import principal
from lamina.config import load_settings
from lamina.identity.models import User
from lamina.identity.principal import Principal
from lamina.manager import build_services


def main(port: int) -> None:
    settings = load_settings()
    svc = build_services(settings)
    with svc.db.read() as s:
        admin = s.scalars(select(User).where(User.role == "admin")).first()
        assert admin is not None, "bootstrap an administrator first"
        who = Principal(admin.id, admin.access_key, admin.role)
    app = create_app(svc, background=False)
    app.dependency_overrides[principal] = lambda: who
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(int(sys.argv[1]))
