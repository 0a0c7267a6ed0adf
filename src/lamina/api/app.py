"""Assembles the manager's ASGI application from the domains' routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from lamina import __version__
from lamina.api.auth import AuthenticationMiddleware, admin, principal, route_rules
from lamina.api.edge import EdgeMiddleware
from lamina.api.negotiation import NegotiationMiddleware
from lamina.api.openapi import install_openapi
from lamina.api.routes.audit import router as audit
from lamina.api.routes.blobs import blobs
from lamina.api.routes.channels import appliances, channels
from lamina.api.routes.checkpoints import checkpoints, instance_checkpoints
from lamina.api.routes.guest import guest
from lamina.api.routes.hosts import enrolment, hosts
from lamina.api.routes.images import images
from lamina.api.routes.instances import instances
from lamina.api.routes.jobs import router as jobs
from lamina.api.routes.networks import instance_forwards, networks
from lamina.api.routes.system import health, system
from lamina.api.routes.users import login_router, me_router, users_router
from lamina.api.routes.volumes import snapshots, volumes
from lamina.api.zerocopy import ZeroCopy
from lamina.audit.middleware import AuditMiddleware
from lamina.channels.refresher import ChannelRefresher
from lamina.compute.monitor import HostMonitor
from lamina.httperrors import install_error_handlers
from lamina.images.janitor import UploadJanitor
from lamina.jobs.runner import JobRunner
from lamina.services import Services


def app_from_settings() -> ZeroCopy:
    """The manager app built from the settings, as ``lamina serve`` runs it: the factory each
    worker process calls when ``manager.processes`` is above 1."""
    from lamina.api.edge import BoundedHttpTools
    from lamina.config import load_settings
    from lamina.logs import setup_logging
    from lamina.manager import build_services

    settings = load_settings()
    setup_logging(settings.log_level)
    BoundedHttpTools.limit = settings.manager.max_header_bytes
    return ZeroCopy(create_app(build_services(settings)))


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
                undo_retry_seconds=svc.settings.jobs.undo_retry_seconds,
                undo_retry_max_seconds=svc.settings.jobs.undo_retry_max_seconds,
            )
            svc.runner.start()
            monitor = HostMonitor(svc)
            monitor.start()
            janitor = UploadJanitor(svc)
            janitor.start()
            refresher = ChannelRefresher(svc)
            refresher.start()
        try:
            yield
        finally:
            if monitor is not None:
                monitor.stop()
                janitor.stop()
                refresher.stop()
            if svc.runner is not None:
                svc.runner.stop()

    # No unauthenticated /docs, /redoc or /openapi.json: the document is served by
    # api.system behind the same authentication as everything else.
    app = FastAPI(
        # No OpenTelemetry: left on, FastAPI looks up its providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="Lamina",
        version=__version__,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = svc
    install_error_handlers(app)
    # The one place authentication plugs in: every router but health, agent enrolment (its
    # one-time token authenticates it) and login depends on the caller's identity.
    # Starlette tries routes in order: the busiest routers come first.
    # The configuration service authenticates instances by their tokens, not users; the
    # blobs, hosts by the capabilities the manager gave them (lamina.compute.fetch).
    for router in (health, enrolment, login_router, guest, blobs):
        app.include_router(router)
    # instance_forwards and instance_checkpoints before instances, whose POST /{ref}/{action}
    # would take their paths.
    domains = (
        images, instance_forwards, instance_checkpoints, instances, jobs, system, users_router,
        me_router, channels, appliances, networks,
    )  # fmt: skip
    for router in (*domains, volumes, snapshots, checkpoints):
        app.include_router(router, dependencies=[Depends(principal)])
    app.include_router(hosts, dependencies=[Depends(admin)])
    app.include_router(audit, dependencies=[Depends(admin)])
    # Innermost, so that its refusals are audited and negotiated like any answer.
    app.add_middleware(
        AuthenticationMiddleware,
        public=route_rules((health, enrolment, login_router, guest, blobs)),
        uploads=route_rules((*domains, volumes, snapshots), only_uploads=True),
    )
    # Added before negotiation, so it sits inside it and reads error codes from JSON, not XML.
    app.add_middleware(AuditMiddleware, db=svc.db)
    app.add_middleware(NegotiationMiddleware)
    # Outermost: limits and refusals before anything reads, buffers or records the request.
    app.add_middleware(
        EdgeMiddleware,
        max_body_bytes=svc.settings.manager.max_body_bytes,
        max_header_bytes=svc.settings.manager.max_header_bytes,
    )
    install_openapi(app)
    return app
