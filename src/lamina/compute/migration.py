"""Moving instances between hosts: ``lamina instance migrate`` and ``lamina host evacuate``.

Everything is checked before anything moves (each refusal a 4xx): administrators only
(OpenStack's default policy for live and cold migration), an instance that exists and has
no job running, a state the mode allows, a source host that answers, a destination the
scheduler accepts (not the source, up, enabled, with room: ``place``) running the same
kind of hypervisor.

``instance.migrate`` then runs these steps (docs/migration.md has the whole story):

1. ``fetch_to_destination``: the destination's cache receives the read-only layers, kernel,
   initrd or backing image, through compute's fetch (what it has already is not fetched);
2. ``stop_for_cold``: a cold move of a running instance stops it first (Nova's cold
   migration, Incus's ``move --stateless``); it is started again on the new host;
3. ``before_move``: the other domains' hooks (the network on the destination, volumes
   exported to it);
4. ``prepare_destination``: the destination makes the instance's own disks empty with their
   sizes (the config disk again from its files) and gives the source's definition its paths;
5. ``migrate``: the source's agent moves the guest (libvirt peer to peer, the writable disks
   by NBD), the manager polls its progress, steps up the allowed downtime, and aborts it at
   the deadline (the guest keeps running on the source);
6. ``switch``: the destination plugs its taps, the database records the new host;
7. ``after_move``: the other domains' hooks (forwards follow, volumes withdrawn from the
   source);
8. ``clean_source``: the source's definition and files go.

A stopped instance moves the same way: started paused on the source (its vCPUs never run),
moved paused, powered off on the destination. Every step is idempotent and asks the hosts
what is true rather than trusting what it remembers, so a manager restarted mid-migration
resumes the job; a failed job leaves the instance recorded where its guest really runs
(``settle``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lamina.compute import instances as instance_service
from lamina.compute.boot import CONFIG
from lamina.compute.hosts import get_host, parse_address
from lamina.compute.jobs import (
    GUEST_STATES,
    config_files,
    definition_for,
    fetch_to,
    set_instance,
)
from lamina.compute.lifecycle import lifecycle_of
from lamina.compute.models import Host, Instance
from lamina.compute.scheduler import check_destination
from lamina.errors import (
    BackendUnavailable,
    Forbidden,
    GuestNotFound,
    InvalidRequest,
    InvalidState,
    LaminaError,
    NotFound,
)
from lamina.identity.principal import Principal
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.jobs.models import FINISHED, Job, JobStep
from lamina.jobs.service import submit
from lamina.jobs.views import describe_job
from lamina.wire.client import AgentClient
from lamina.wire.protocol import IncomingPrepare, MigrationStart, MigrationStatus

if TYPE_CHECKING:
    from lamina.services import Services

log = logging.getLogger(__name__)

MODES = ("auto", "live", "cold")
#: Seconds between two polls of a running migration.
POLL = 0.5
MIB = 1024 * 1024


# -- the use cases ------------------------------------------------------------------------


def migrate_instance(
    svc: Services, who: Principal, ref: str, host: str | None = None, mode: str = "auto"
) -> dict[str, Any]:
    """Queue the move of an instance to ``host`` (None: the scheduler's choice among the
    others); ``mode`` ``live`` (running or paused), ``cold`` (stopped; a running one is
    stopped and started again there) or ``auto`` (live if it runs). Administrators only.
    Answers ``{"job"}``."""
    with svc.db.write() as s:
        job = queue_migration(s, svc, who, ref, host, mode)
        result = {"job": describe_job(job)}
    svc.wake_jobs()
    return result


def queue_migration(
    s: Session, svc: Services, who: Principal, ref: str, host: str | None, mode: str
) -> Job:
    """Check everything (see the module's doc) and submit ``instance.migrate``; the job."""
    if not who.is_admin:
        raise Forbidden("only administrators may move instances between hosts")
    if mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}", mode=mode)
    instance = instance_service.get_instance(s, ref, who)
    busy = instance_service.busy_job(s, instance.id)
    if busy is not None:
        raise InvalidState(
            f"instance {instance.name!r} has a {busy.kind} job in progress ({busy.id})",
            job=busy.id,
        )
    live = _choose_mode(instance, mode)
    source = s.get(Host, instance.host_id) if instance.host_id else None
    if source is None:
        raise InvalidState(f"instance {instance.name!r} is on no host")
    if source.status not in ("up", "disabled"):
        raise InvalidState(
            f"instance {instance.name!r} is on host {source.name!r}, which is {source.status}: "
            "a guest moves only from a host that answers",
            host=source.name,
        )
    dest = check_destination(s, svc.settings.compute, instance, host)
    if dest.domain_type and source.domain_type and dest.domain_type != source.domain_type:
        raise InvalidState(
            f"host {dest.name!r} runs {dest.domain_type} guests, {source.name!r} "
            f"{source.domain_type}: a guest cannot move between them",
            host=dest.name,
        )
    cfg = svc.settings.migration
    return submit(
        s,
        svc.jobs.get("instance.migrate"),
        {
            "instance_id": instance.id,
            "source_id": source.id,
            "dest_id": dest.id,
            "live": live,
            "restart": not live and instance.status in ("running", "paused"),
            "shared": cfg.storage == "shared",
        },
        target_type="instance",
        target_id=instance.id,
        owner=who.user_id,
        deadline=cfg.deadline_seconds + 1800,
    )


def _choose_mode(instance: Instance, mode: str) -> bool:
    """Whether the move is live, or InvalidState for a state the mode does not allow."""
    status = instance.status
    if mode == "live" and status not in ("running", "paused"):
        raise InvalidState(
            f"cannot live-migrate instance {instance.name!r}: it is {status} (a live "
            "migration moves a running or paused guest; use --cold for a stopped one)",
            status=status,
        )
    if status not in ("running", "paused", "stopped"):
        raise InvalidState(
            f"cannot migrate instance {instance.name!r}: it is {status}", status=status
        )
    return mode == "live" or (mode == "auto" and status != "stopped")


def evacuate_host(svc: Services, who: Principal, host_ref: str) -> dict[str, Any]:
    """Queue ``host.evacuate``: every instance of the host moved away one after another
    (live if it runs, cold if stopped), and a report of what moved and what could not and
    why. Administrators only. Answers ``{"job"}``."""
    if not who.is_admin:
        raise Forbidden("only administrators may evacuate a host")
    with svc.db.write() as s:
        host = get_host(s, host_ref)
        job = submit(
            s,
            svc.jobs.get("host.evacuate"),
            {"host_id": host.id, "who": who.user_id},
            target_type="host",
            target_id=host.id,
            owner=who.user_id,
            deadline=24 * 3600,
        )
        result = {"job": describe_job(job)}
    svc.wake_jobs()
    return result


# -- the steps of instance.migrate --------------------------------------------------------


def _hosts(ctx: StepContext) -> tuple[Instance, Host, Host]:
    with ctx.services.db.read() as s:
        instance = s.get(Instance, ctx.params["instance_id"])
        source = s.get(Host, ctx.params["source_id"])
        dest = s.get(Host, ctx.params["dest_id"])
    if instance is None or source is None or dest is None:
        raise NotFound("the instance or one of its hosts vanished")
    return instance, source, dest


def _agents(ctx: StepContext) -> tuple[Instance, Host, Host, AgentClient, AgentClient]:
    instance, source, dest = _hosts(ctx)
    agents = ctx.services.agents
    return instance, source, dest, agents.for_host(source), agents.for_host(dest)


def fetch_to_destination(ctx: StepContext) -> None:
    """The destination caches what the guest reads but does not own (layers, kernel,
    initrd, an overlay's backing image); what it has is not fetched again. The bytes it
    did fetch are recorded (``layer_bytes``)."""
    instance, _, dest, _, dst = _agents(ctx)
    before = {e.sha256 for e in dst.cache_list()}
    fetch_to(ctx, dest, dst, instance)
    fetched = [e for e in dst.cache_list() if e.sha256 not in before]
    ctx.state["layer_bytes"] = ctx.state.get("layer_bytes", 0) + sum(e.size for e in fetched)


def stop_for_cold(ctx: StepContext) -> None:
    """A cold move of a running instance: stop it (gracefully, as ``instance stop``)."""
    if ctx.params["live"] or not ctx.params["restart"]:
        return
    instance, _, _, src, _ = _agents(ctx)
    status = src.act(instance.domain_name, "stop")
    set_instance(ctx, status=GUEST_STATES.get(status.state, "stopped"))


def restart_on_source(ctx: StepContext) -> None:
    if ctx.params["live"] or not ctx.params["restart"]:
        return
    instance, _, _, src, _ = _agents(ctx)
    if src.guest(instance.domain_name).state == "stopped":
        status = src.act(instance.domain_name, "start")
        set_instance(ctx, status=GUEST_STATES.get(status.state, "running"))


def before_move(ctx: StepContext) -> None:
    """The other domains make the destination ready (network, volumes' exports)."""
    instance, source, dest = _hosts(ctx)
    for hook in lifecycle_of(ctx.services).before_move:
        hook(ctx.services, instance, source, dest)


def undo_before_move(ctx: StepContext) -> None:
    instance, source, dest = _hosts(ctx)
    for hook in lifecycle_of(ctx.services).move_aborted:
        hook(ctx.services, instance, source, dest)


def prepare_destination(ctx: StepContext) -> None:
    """The destination makes the guest's own disks (empty, or from files for the config
    disk) and answers the source's definition with its paths (kept for ``migrate``)."""
    instance, _, _, src, dst = _agents(ctx)
    name = instance.domain_name
    if _arrived(dst, name):
        return  # resumed after the guest moved
    source = src.migration_source(name, cold=not ctx.params["live"])
    disks = []
    for disk in source.disks:
        if disk.readonly:
            if disk.name != CONFIG:
                raise InvalidState(f"read-only disk {disk.name} of {instance.name} cannot move")
            disk = disk.model_copy(update={"files": config_files(ctx.services, instance)})
        disks.append(disk)
    prepared = dst.incoming_prepare(
        name,
        IncomingPrepare(
            definition=definition_for(ctx, instance),
            xml=source.xml,
            disks=disks,
            shared=ctx.params["shared"],
        ),
    )
    ctx.state["xml"] = prepared.xml
    ctx.state["copy_disks"] = prepared.copy_disks
    ctx.state["disk_total"] = sum(d.size_bytes for d in disks if not d.readonly)


def remove_incoming(ctx: StepContext) -> None:
    """Undo: what the destination made goes (never a guest that runs there)."""
    instance, _, _, _, dst = _agents(ctx)
    dst.incoming_remove(instance.domain_name)


def migrate(ctx: StepContext) -> None:
    """Move the guest, watching it: progress reported, the allowed downtime stepped up as
    the deadline nears, aborted at the deadline with the guest still on the source."""
    instance, source, dest, src, dst = _agents(ctx)
    name = instance.domain_name
    cfg = ctx.services.settings.migration
    status = _status_of(src, name)
    if status.state != "running":
        if _arrived(dst, name):
            ctx.state["moved"] = True
            return
        uri, migrate_uri, tls = transport(cfg.transport, dst, dest)
        status = src.migration_start(
            name,
            MigrationStart(
                dest_uri=uri,
                migrate_uri=migrate_uri,
                xml=ctx.state["xml"],
                copy_disks=ctx.state.get("copy_disks", []),
                tls=tls,
                max_downtime_ms=cfg.downtime_ms,
                auto_converge=cfg.auto_converge,
                paused=not ctx.params["live"],
            ),
        )
        ctx.state["started_at"] = time.time()
    started = float(ctx.state.setdefault("started_at", time.time()))
    watchdog = Watchdog(cfg.downtime_ms, cfg.max_downtime_ms, cfg.downtime_steps,
                        cfg.deadline_seconds)  # fmt: skip
    while status.state == "running":
        elapsed = time.time() - started
        _report(ctx, status)
        if elapsed >= cfg.deadline_seconds:
            src.migration_abort(name)
            raise LaminaError(
                f"the migration did not converge within {cfg.deadline_seconds:g}s "
                f"({status.memory_remaining / MIB:.1f} MiB of memory and "
                f"{status.disk_remaining / MIB:.1f} MiB of disk still to copy, the guest "
                f"dirtying {status.dirty_rate} pages/s, allowed downtime "
                f"{status.max_downtime_ms or cfg.downtime_ms} ms): aborted, the guest "
                f"still runs on {source.name}",
                reason="not_converged",
            )
        wanted = watchdog.downtime(elapsed)
        if status.max_downtime_ms is not None and wanted > status.max_downtime_ms:
            log.info("migration of %s: allowing %d ms of downtime", instance.name, wanted)
            try:
                status = src.migration_tune(name, wanted)
            except BackendUnavailable:
                status = _status_of(src, name)
            continue
        time.sleep(POLL)
        status = _status_of(src, name)
    if status.state == "none" and _arrived(dst, name):
        status = MigrationStatus(state="completed")  # finished while the agent restarted
    if status.state != "completed":
        raise LaminaError(
            f"the migration to {dest.name} {status.state}: {status.error or 'no reason given'};"
            f" the guest still runs on {source.name}",
            reason=status.state,
        )
    ctx.state["moved"] = True
    ctx.state["memory_bytes"] = status.memory_processed
    ctx.state["disk_bytes"] = status.disk_processed
    ctx.state["seconds"] = round(time.time() - started, 3)
    _report(ctx, status)
    _result(ctx)


#: Seconds the source's agent may be unreachable while a migration runs (restarted, say):
#: libvirtd carries the migration on meanwhile, and the agent answers for it when back.
AGENT_GRACE = 60.0


def _status_of(src: AgentClient, name: str) -> MigrationStatus:
    """The source's status of the migration, asked again while its agent cannot be reached
    (for ``AGENT_GRACE`` seconds)."""
    until = time.monotonic() + AGENT_GRACE
    while True:
        try:
            return src.migration_status(name)
        except BackendUnavailable as exc:
            if time.monotonic() >= until:
                raise
            log.warning("migration of %s: its source does not answer (%s)", name, exc.message)
            time.sleep(1.0)


def abort_migration(ctx: StepContext) -> None:
    """Undo: abort a migration still running (the guest stays on the source)."""
    instance, _, _, src, _ = _agents(ctx)
    src.migration_abort(instance.domain_name)


class Watchdog:
    """The downtime allowed as a migration runs: ``start`` ms at first, then ``steps``
    equal steps up to ``top`` over the first half of the deadline (Nova's
    ``live_migration_downtime_steps``), so a guest that dirties memory faster than it is
    copied is given a longer final pause before it is given up on."""

    def __init__(self, start: int, top: int, steps: int, deadline: float) -> None:
        self.start, self.top, self.steps, self.deadline = start, max(top, start), steps, deadline

    def downtime(self, elapsed: float) -> int:
        if self.steps <= 0 or self.top == self.start:
            return self.start
        span = self.deadline / 2 / self.steps
        step = min(int(elapsed / span), self.steps)
        return int(self.start + (self.top - self.start) * step / self.steps)


def transport(kind: str, agent: AgentClient, dest: Host) -> tuple[str, str | None, bool]:
    """(libvirt URI of the destination, QEMU's stream URI, TLS?). ``tls``: the URI the
    destination's agent reports (its libvirtd's certificate is from Lamina's CA), the
    stream over TLS too; ``tcp``: plain TCP to the host's address, for labs of namespace
    hosts only (nothing authenticates it)."""
    address, _ = parse_address(dest.address)
    if kind == "tcp":
        return f"qemu+tcp://{address}/system", f"tcp://{address}", False
    uri = agent.info().migration_uri
    if not uri:
        raise InvalidState(
            f"host {dest.name} reports no migration URI: its libvirtd has no certificate "
            "from Lamina's CA (re-enrol its agent), or set migration.transport = 'tcp' in "
            "a lab",
            host=dest.name,
        )
    host = urlsplit(uri).hostname or address
    return uri, f"tcp://{host}", True


def _report(ctx: StepContext, status: MigrationStatus) -> None:
    total = status.memory_total + status.disk_total
    done = status.memory_processed + status.disk_processed
    remaining = status.memory_remaining + status.disk_remaining
    fraction = 0.1 + 0.8 * (1 - remaining / total) if total else 0.1
    ctx.report(fraction=min(fraction, 0.9), bytes_done=done, bytes_total=total)
    message = (
        f"memory {status.memory_remaining / MIB:.1f} of {status.memory_total / MIB:.1f} MiB "
        f"remaining, disk {status.disk_remaining / MIB:.1f} of "
        f"{status.disk_total / MIB:.1f} MiB remaining"
    )
    if status.max_downtime_ms:
        message += f", downtime allowed {status.max_downtime_ms} ms"
    with ctx.services.db.write() as s:
        s.execute(
            update(JobStep)
            .where(JobStep.job_id == ctx.job_id, JobStep.name == "migrate")
            .values(message=message)
        )


def switch(ctx: StepContext) -> None:
    """The guest runs on the destination: its taps plugged there, its figures kept, the
    database says so. A cold move powers the paused guest off (and starts it again if it
    ran before)."""
    instance, _, dest, _, dst = _agents(ctx)
    name = instance.domain_name
    finished = dst.incoming_finish(name)
    if finished.downtime_ms is not None:
        ctx.state["downtime_ms"] = finished.downtime_ms
    if finished.memory_processed:
        ctx.state["memory_bytes"] = finished.memory_processed
    state = dst.guest(name).state
    if not ctx.params["live"]:
        if state != "stopped":
            state = dst.act(name, "destroy").state
        if ctx.params["restart"]:
            state = dst.act(name, "start").state
    set_instance(ctx, host_id=dest.id, status=GUEST_STATES.get(state, "error"), error=None)
    _result(ctx, dest.name)
    ctx.report(fraction=0.95)


def after_move(ctx: StepContext) -> None:
    """The other domains follow (forwards, volumes withdrawn from the source)."""
    instance, source, dest = _hosts(ctx)
    for hook in lifecycle_of(ctx.services).after_move:
        hook(ctx.services, instance, source, dest)


def clean_source(ctx: StepContext) -> None:
    """The source forgets the guest (its files too, unless the storage is shared).
    Refused while the guest still runs there."""
    instance, source, _, src, _ = _agents(ctx)
    src.migration_forget(instance.domain_name, keep_disks=ctx.params["shared"])


def _arrived(dst: AgentClient, name: str) -> bool:
    """Whether the guest runs (or, moved cold, sits paused after its move) on the
    destination rather than waiting for its state there."""
    try:
        status = dst.incoming_status(name)
    except GuestNotFound:
        return False
    return status == "arrived"


def _result(ctx: StepContext, host: str | None = None) -> None:
    """What the finished job shows (``result``): where the guest went and the figures."""
    state = ctx.state
    result = dict(state.get("result") or {})
    if host:
        result["host"] = host
    result.update(
        mode="live" if ctx.params["live"] else "cold",
        seconds=state.get("seconds"),
        downtime_ms=state.get("downtime_ms"),
        memory_bytes=state.get("memory_bytes", 0),
        disk_bytes=state.get("disk_bytes", 0),
        layer_bytes=state.get("layer_bytes", 0),
    )
    result["bytes_moved"] = result["memory_bytes"] + result["disk_bytes"] + result["layer_bytes"]
    state["result"] = result


def settle(ctx: StepContext, error: str) -> None:
    """After a failure (and its rollback): the instance is recorded on the host where its
    guest runs, in the state it is in there, with the error."""
    instance, source, dest = _hosts(ctx)
    where, state = locate(ctx.services, instance, source, dest)
    values: dict[str, Any] = {"error": error}
    if where is not None:
        values["host_id"] = where.id
        values["status"] = GUEST_STATES.get(state or "", "error")
    set_instance(ctx, **values)


def locate(
    svc: Services, instance: Instance, source: Host, dest: Host
) -> tuple[Host | None, str | None]:
    """Ask both hosts where the guest is: the host whose guest is no incoming leftover and
    runs (else the source if it still has it, else the destination), and its state; a
    paused incoming leftover on the destination is removed. (None, None) when neither
    host answers."""
    name = instance.domain_name
    found: dict[str, str] = {}
    for host in (source, dest):
        try:
            agent = svc.agents.for_host(host)
            found[host.id] = agent.incoming_status(name)
        except GuestNotFound:
            found[host.id] = "absent"
        except LaminaError as exc:
            log.warning("cannot ask host %s about %s: %s", host.name, instance.name, exc)
    at_dest, at_source = found.get(dest.id), found.get(source.id)
    if at_dest == "incoming" and at_source in ("arrived",):
        svc.agents.for_host(dest).incoming_remove(name)
        at_dest = "absent"
    for host, seen in ((dest, at_dest), (source, at_source)):
        if seen == "arrived":
            state = svc.agents.for_host(host).guest(name).state
            if state in ("running", "paused"):
                return host, state
    for host, seen in ((source, at_source), (dest, at_dest)):
        if seen == "arrived":
            return host, svc.agents.for_host(host).guest(name).state
    return None, None


# -- host.evacuate ------------------------------------------------------------------------


def evacuate(ctx: StepContext) -> None:
    """Move the host's instances away one at a time (each its own ``instance.migrate``
    job, its destination chosen when its turn comes); the report in ``state["report"]``
    says for each what moved where, or why not."""
    svc: Services = ctx.services
    report: list[dict[str, Any]] = ctx.state.setdefault("report", [])
    done = {r["instance"] for r in report}
    with svc.db.read() as s:
        ids = list(
            s.scalars(
                select(Instance.id)
                .where(
                    Instance.host_id == ctx.params["host_id"],
                    Instance.status.not_in(("deleted",)),
                )
                .order_by(Instance.created_at)
            )
        )
    admin = Principal(user_id=ctx.params.get("who") or "", access_key="", role="admin")
    for instance_id in ids:
        if instance_id in done:
            continue
        entry = _evacuate_one(ctx, svc, admin, instance_id)
        report.append(entry)
        ctx.report(fraction=len(report) / max(len(ids), 1))
        with svc.db.write() as s:  # the report so far survives a restart
            job = s.get(Job, ctx.job_id)
            if job is not None:
                job.state = {**ctx.state}
    moved = sum(1 for r in report if r["outcome"] == "moved")
    summary = f"{moved} of {len(report)} instance(s) moved"
    ctx.state["result"] = {"report": report, "summary": summary}


def _evacuate_one(
    ctx: StepContext, svc: Services, admin: Principal, instance_id: str
) -> dict[str, Any]:
    pending = ctx.state.setdefault("pending", {})
    job_id = pending.get(instance_id)
    with svc.db.read() as s:
        instance = s.get(Instance, instance_id)
        name = instance.name if instance else instance_id
    entry: dict[str, Any] = {"instance": instance_id, "name": name}
    if job_id is None:
        try:
            with svc.db.write() as s:
                job = queue_migration(s, svc, admin, instance_id, None, "auto")
                job_id = pending[instance_id] = job.id
                entry["mode"] = "live" if job.params["live"] else "cold"
        except LaminaError as exc:
            return entry | {"outcome": "not moved", "reason": exc.message}
        svc.wake_jobs()
    while True:
        with svc.db.read() as s:
            child = s.get(Job, job_id)
            status, error = (child.status, child.error) if child else ("failed", "job vanished")
            dest = s.get(Host, child.params["dest_id"]) if child else None
        if status in FINISHED:
            break
        time.sleep(1.0)
    entry["job"] = job_id
    if status == "succeeded":
        return entry | {"outcome": "moved", "host": dest.name if dest else None}
    return entry | {"outcome": "not moved", "reason": error or status}


def register_migration_jobs(registry: JobRegistry, migration_deadline: float = 3600) -> None:
    """``instance.migrate`` and ``host.evacuate``."""
    registry.register(
        JobKind(
            "instance.migrate",
            (
                Step("fetch_to_destination", fetch_to_destination, timeout=1800),
                Step("stop_for_cold", stop_for_cold, restart_on_source, timeout=120),
                Step("before_move", before_move, undo_before_move, timeout=300),
                Step("prepare_destination", prepare_destination, remove_incoming, timeout=600),
                Step("migrate", migrate, abort_migration, timeout=migration_deadline + 300),
                Step("switch", switch, timeout=180),
                Step("after_move", after_move, timeout=300),
                Step("clean_source", clean_source, timeout=120),
            ),
            deadline=migration_deadline + 1800,
            on_failure=settle,
        )
    )
    registry.register(
        JobKind("host.evacuate", (Step("evacuate", evacuate, timeout=24 * 3600),), deadline=86400)
    )
