"""The jobs that change instances, step by step, each step with its undo."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

from sqlalchemy import select

from lamina.appliances.layered import CONFIG, UPPER, current_boot, layer_serial
from lamina.compute.models import Host, Instance
from lamina.db.types import utcnow
from lamina.errors import BackendUnavailable, GuestNotFound, LaminaError, NotFound
from lamina.guest.token import instance_token
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.network.forwards import remove_from_host
from lamina.network.models import Port
from lamina.network.service import release
from lamina.network.sync import hosts_of, push, queue_sync
from lamina.volumes.jobs import release_instance_volumes
from lamina.wire.client import AgentClient
from lamina.wire.protocol import DiskCreate, GuestDefinition, GuestDisk, GuestNic

log = logging.getLogger(__name__)
PROGRESS_INTERVAL = 0.5
GUEST_STATES = {"running": "running", "paused": "paused", "stopped": "stopped", "crashed": "error"}


def _load(ctx: StepContext) -> tuple[Instance, Host, AgentClient]:
    with ctx.services.db.read() as s:
        instance = s.get(Instance, ctx.params["instance_id"])
        if instance is None:
            raise NotFound(f"instance {ctx.params['instance_id']} vanished")
        host = s.get(Host, instance.host_id)
        if host is None:
            raise NotFound(f"host of instance {instance.name} vanished")
    return instance, host, ctx.services.agents.for_host(host)


def _set(ctx: StepContext, **values: Any) -> None:
    with ctx.services.db.write() as s:
        instance = s.get(Instance, ctx.params["instance_id"])
        if instance is not None:
            for key, value in values.items():
                setattr(instance, key, value)


# -- instance.create ----------------------------------------------------------------------


def fetch_boot_files(ctx: StepContext) -> None:
    """Have the host cache the kernel, initrd, disk image and layers (a no-op for cached
    ones), reporting the agent's byte counts and rate as the job's progress."""
    instance, _, agent = _load(ctx)
    _fetch(ctx, agent, instance)


def _fetch(ctx: StepContext, agent: AgentClient, instance: Instance) -> None:
    sources: list[tuple[str, str, str | None]] = [
        (k, getattr(instance, k), None)
        for k in ("kernel", "initrd", "disk_image")
        if getattr(instance, k)
    ]
    sources += [(f"layer{i}", x["source"], x["sha256"]) for i, x in enumerate(_layers(instance))]
    with ThreadPoolExecutor(1) as pool:
        for i, (key, source, digest) in enumerate(sources):
            pending = pool.submit(agent.cache_install, source, digest)
            while True:
                try:
                    entry = pending.result(timeout=PROGRESS_INTERVAL)
                    break
                except FuturesTimeout:
                    _report_transfer(ctx, agent, source, i, len(sources))
            ctx.state[f"{key}_sha256"] = entry.sha256
            ctx.report(fraction=(i + 1) / len(sources) * 0.5)


def _report_transfer(ctx: StepContext, agent: AgentClient, source: str, i: int, n: int) -> None:
    try:
        transfers = agent.downloads().transfers
    except LaminaError:
        return  # progress is best effort; the download itself decides the step
    for t in transfers:
        if t.source == source:
            part = t.bytes_done / t.bytes_total if t.bytes_total else 0.0
            ctx.report(
                fraction=(i + part) / n * 0.5,
                bytes_done=t.bytes_done,
                bytes_total=t.bytes_total,
                rate=t.rate,
            )


def _layers(instance: Instance) -> list[dict[str, str]]:
    return list(instance.layers or [])


def config_files(instance: Instance, token: str) -> dict[str, str]:
    """The config disk of a layered instance: what its initramfs reads (docs/appliances.md),
    and the instance's id and configuration-service token (docs/networks.md)."""
    variables = instance.variables or {}
    return {
        "variables": "".join(f"{k}\t{v}\n" for k, v in sorted(variables.items())),
        "templates": "".join(f"{path}\n" for path in instance.templates or []),
        "hostname": f"{instance.name}\n",
        "instance": f"{instance.id}\n",
        "token": f"{token}\n",
    }


def create_disk(ctx: StepContext) -> None:
    instance, _, agent = _load(ctx)
    if instance.layers is not None:
        guest = instance.domain_name
        size = instance.disk_size_bytes
        agent.disk_create(
            DiskCreate(guest=guest, name=UPPER, size_bytes=size, format="raw", filesystem="ext4")
        )
        files = config_files(instance, instance_token(ctx.services.box, instance.id))
        agent.disk_create(DiskCreate(guest=guest, name=CONFIG, format="raw", files=files))
        ctx.state["disks"] = [UPPER, CONFIG]
        return
    if not (instance.disk_image or instance.disk_size_bytes):
        return
    agent.disk_create(
        DiskCreate(
            guest=instance.domain_name,
            name="root",
            size_bytes=instance.disk_size_bytes,
            backing=ctx.state.get("disk_image_sha256"),
            format="qcow2",
        )
    )
    ctx.state["disks"] = ["root"]


def remove_disk(ctx: StepContext) -> None:
    instance, _, agent = _load(ctx)
    for name in ctx.state.get("disks", ["root"]):
        agent.disk_remove(instance.domain_name, name)


def define_guest(ctx: StepContext) -> None:
    instance, _, agent = _load(ctx)
    agent.define(instance.domain_name, _definition(ctx, instance))
    ctx.report(fraction=0.75)


def _definition(ctx: StepContext, instance: Instance) -> GuestDefinition:
    if instance.layers is None:
        disks = [GuestDisk(name=d) for d in ctx.state.get("disks", [])]
    else:
        # Read-only layers lowest first, then the instance layer and the config disk, each
        # with the serial number the kernel command line names (``lamina.appliances.layered``).
        disks = [
            GuestDisk(name=layer_serial(i), layer=x["sha256"], serial=layer_serial(i))
            for i, x in enumerate(_layers(instance))
        ]
        disks.append(GuestDisk(name=UPPER, format="raw", serial=UPPER))
        disks.append(GuestDisk(name=CONFIG, format="raw", readonly=True, serial=CONFIG))
    with ctx.services.db.read() as s:
        ports = s.scalars(select(Port).where(Port.instance_id == instance.id).order_by(Port.nic))
        nics = [GuestNic(network=p.network_id, mac=p.mac or "") for p in ports]
    return GuestDefinition(
        vcpus=instance.vcpus,
        memory_mib=instance.memory_mib,
        kernel=ctx.state.get("kernel_sha256"),
        initrd=ctx.state.get("initrd_sha256"),
        cmdline=instance.cmdline,
        disks=disks,
        nics=nics,
    )


def connect_networks(ctx: StepContext) -> None:
    """Before the guest is defined its host must have its networks (bridge, DHCP entry);
    the other hosts on those networks learn its name."""
    instance, host, _ = _load(ctx)
    with ctx.services.db.write() as s:
        networks = set(s.scalars(select(Port.network_id).where(Port.instance_id == instance.id)))
        if not networks:
            return
        others = hosts_of(s, networks) - {host.id}
        queue_sync(s, ctx.services.jobs, others)
    push(ctx.services, host.id)
    ctx.services.wake_jobs()


def undefine_guest(ctx: StepContext) -> None:
    instance, _, agent = _load(ctx)
    agent.undefine(instance.domain_name)


def start_guest(ctx: StepContext) -> None:
    instance, _, agent = _load(ctx)
    status = agent.act(instance.domain_name, "start")
    _set(ctx, status=GUEST_STATES.get(status.state, "running"), started_at=utcnow(), error=None)


def destroy_guest(ctx: StepContext) -> None:
    instance, _, agent = _load(ctx)
    try:
        agent.act(instance.domain_name, "destroy")
    except GuestNotFound:
        pass


def mark_error(ctx: StepContext, error: str) -> None:
    _set(ctx, status="error", error=error)


# -- start, stop, pause, resume, reboot ---------------------------------------------------


def refresh_layers(ctx: StepContext) -> None:
    """Before a layered instance boots: if a newer substrate has been installed since it last
    booted, fetch it into the host's cache and redefine the guest on it. The application,
    deployment and instance layers stay as they are."""
    instance, _, agent = _load(ctx)
    if instance.layers is None or not instance.appliance_id:
        return
    with ctx.services.db.read() as s:
        boot = current_boot(s, instance)
    if boot == (instance.kernel, instance.initrd, instance.cmdline, instance.layers):
        return
    if agent.guest(instance.domain_name).state != "stopped":
        return  # a running guest keeps its layers until it is stopped and started again
    kernel, initrd, cmdline, layers = boot
    _set(ctx, kernel=kernel, initrd=initrd, cmdline=cmdline, layers=layers)
    instance, _, agent = _load(ctx)
    _fetch(ctx, agent, instance)
    agent.define(instance.domain_name, _definition(ctx, instance))
    log.info("instance %s boots on its new substrate next", instance.name)


def _action_step(action: str) -> Step:
    def run(ctx: StepContext) -> None:
        instance, _, agent = _load(ctx)
        forced = action == "stop" and ctx.params.get("force")
        status = agent.act(instance.domain_name, "destroy" if forced else action)
        values: dict[str, Any] = {"status": GUEST_STATES.get(status.state, "error"), "error": None}
        if action == "start":
            values["started_at"] = utcnow()
        _set(ctx, **values)

    return Step(action, run, timeout=90 if action == "stop" else 60)


def refresh_after_failure(ctx: StepContext, error: str) -> None:
    """A failed action leaves the instance in whatever state its guest is really in."""
    try:
        instance, _, agent = _load(ctx)
        state = GUEST_STATES.get(agent.guest(instance.domain_name).state, "error")
    except Exception:
        state = "error"
    _set(ctx, status=state, error=error)


# -- instance.delete ----------------------------------------------------------------------


def remove_guest(ctx: StepContext) -> None:
    instance, host, agent = _load(ctx)
    try:
        agent.undefine(instance.domain_name)
    except BackendUnavailable:
        if not ctx.params.get("force"):
            raise
        # Forced: the record goes now; `lamina reconcile` removes the guest once the host
        # answers again (it is then an orphan).
        log.warning("instance %s deleted while host %s is unreachable", instance.name, host.name)


def remove_forwards(ctx: StepContext) -> None:
    """Its host stops publishing the instance's ports."""
    remove_from_host(ctx.services, ctx.params["instance_id"], bool(ctx.params.get("force")))


def release_volumes(ctx: StepContext) -> None:
    """The guest is gone, and with it its volumes' disks: withdraw their exports and make
    them available again."""
    release_instance_volumes(ctx.services, ctx.params["instance_id"])


def mark_deleted(ctx: StepContext) -> None:
    """The record is deleted and its addresses and forwards freed; the hosts on its
    networks are to be told (``disconnect_networks``)."""
    with ctx.services.db.write() as s:
        instance = s.get(Instance, ctx.params["instance_id"])
        if instance is None:
            return
        networks = set(s.scalars(select(Port.network_id).where(Port.instance_id == instance.id)))
        hosts = hosts_of(s, networks) | release(s, instance.id)
        instance.status = "deleted"
        ctx.state["sync_hosts"] = sorted(hosts)


def disconnect_networks(ctx: StepContext) -> None:
    """The instance's host drops its DHCP entry (and a network left without guests); every
    host on its networks drops its name. Queued, so an unreachable host is retried rather
    than holding up the deletion."""
    hosts = ctx.state.get("sync_hosts") or []
    if hosts:
        with ctx.services.db.write() as s:
            queue_sync(s, ctx.services.jobs, hosts)
        ctx.services.wake_jobs()


def register_compute_jobs(registry: JobRegistry) -> None:
    registry.register(
        JobKind(
            "instance.create",
            (
                Step("fetch_boot_files", fetch_boot_files, timeout=1800),
                Step("create_disk", create_disk, remove_disk, timeout=600),
                Step("connect_networks", connect_networks, timeout=120),
                Step("define_guest", define_guest, undefine_guest),
                Step("start_guest", start_guest, destroy_guest),
            ),
            deadline=3600,
            on_failure=mark_error,
        )
    )
    for action in ("start", "stop", "pause", "resume", "reboot"):
        steps: tuple[Step, ...] = (_action_step(action),)
        if action == "start":
            steps = (Step("refresh_layers", refresh_layers, timeout=1800), *steps)
        registry.register(
            JobKind(
                f"instance.{action}",
                steps,
                deadline=300,
                on_failure=refresh_after_failure,
            )
        )
    registry.register(
        JobKind(
            "instance.delete",
            (
                Step("remove_guest", remove_guest, timeout=120),
                Step("remove_forwards", remove_forwards, timeout=120),
                Step("release_volumes", release_volumes, timeout=300),
                Step("release", mark_deleted),
                Step("disconnect_networks", disconnect_networks),
            ),
            deadline=300,
            on_failure=mark_error,
        )
    )
