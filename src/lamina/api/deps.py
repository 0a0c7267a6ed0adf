"""Request-scoped access to the manager's services."""

from __future__ import annotations

from fastapi import Request

from lamina.services import Services


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
