"""Assembles the manager's ASGI application from the domains' routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from lamina import __version__
from lamina.api.auth import principal
from lamina.api.negotiation import NegotiationMiddleware
from lamina.api.openapi import install_openapi
from lamina.api.system import health, system
from lamina.compute.monitor import HostMonitor
from lamina.compute.routes import enrolment, hosts, instances
from lamina.httperrors import install_error_handlers
from lamina.jobs.routes import router as jobs
from lamina.jobs.runner import JobRunner
from lamina.services import Services


def create_app(svc: Services, *, background: bool = True) -> FastAPI:
    """The manager's API. With ``background`` the app also runs the job runner and the host
    monitor while it is up (tests may drive them by hand instead)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        monitor = None
        if background:
            svc.runner = JobRunner(
                svc.db,
                svc.jobs,
                svc,
                workers=svc.settings.manager.job_workers,
                lease_seconds=svc.settings.jobs.lease_seconds,
                poll_interval=svc.settings.jobs.poll_interval,
            )
            svc.runner.start()
            monitor = HostMonitor(svc)
            monitor.start()
        try:
            yield
        finally:
            if monitor is not None:
                monitor.stop()
            if svc.runner is not None:
                svc.runner.stop()

    app = FastAPI(title="Lamina", version=__version__, lifespan=lifespan)
    app.state.services = svc
    install_error_handlers(app)
    # The one place authentication plugs in: every router but health and enrolment (which
    # carries its own one-time token) depends on the caller's identity.
    for router in (health, enrolment):
        app.include_router(router)
    for router in (system, hosts, instances, jobs):
        app.include_router(router, dependencies=[Depends(principal)])
    app.add_middleware(NegotiationMiddleware)
    install_openapi(app)
    return app
