"""The jobs that change instances, step by step, each step with its undo.

Compute's own steps are here; the other domains contribute theirs (connect networks, remove
forwards, release volumes, ...) and their hooks through ``lamina.compute.lifecycle``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lamina.compute.boot import CONFIG, UPPER, layer_serial
from lamina.compute.fetch import HostFile, install_files
from lamina.compute.lifecycle import InstanceLifecycle, lifecycle_of
from lamina.compute.models import Host, Instance
from lamina.db.types import utcnow
from lamina.errors import BackendUnavailable, GuestNotFound, NotFound
from lamina.jobs.kinds import JobKind, JobRegistry, Step, StepContext
from lamina.wire.client import AgentClient
from lamina.wire.protocol import DiskCreate, GuestDefinition, GuestDisk

log = logging.getLogger(__name__)
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


def set_instance(ctx: StepContext, **values: Any) -> None:
    """Set fields of the job's instance (``params["instance_id"]``), if it still exists."""
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
    host = _host_of(ctx, instance)
    entries = install_files(ctx.services, host, agent, instance_files(instance), _half(ctx))
    for key, entry in entries.items():
        ctx.state[f"{key}_sha256"] = entry.sha256


def _host_of(ctx: StepContext, instance: Instance) -> Host:
    with ctx.services.db.read() as s:
        host: Host | None = s.get(Host, instance.host_id)
    if host is None:
        raise NotFound(f"host of instance {instance.name} vanished")
    return host


def instance_files(instance: Instance) -> list[HostFile]:
    """The files an instance's host must hold: its kernel, initrd, disk image and layers."""
    files = [
        HostFile(key, getattr(instance, key))
        for key in ("kernel", "initrd", "disk_image")
        if getattr(instance, key)
    ]
    files += [
        HostFile(f"layer{i}", x["source"], x["sha256"]) for i, x in enumerate(_layers(instance))
    ]
    return files


def fetch_to(ctx: StepContext, host: Host, agent: AgentClient, instance: Instance) -> None:
    """Have ``host`` (``agent``'s) cache what ``instance`` boots from, as
    ``fetch_boot_files`` does for the instance's own host: for a move, the destination's
    (``lamina.compute.migration``). Records the digests in the job's state as it does."""
    entries = install_files(ctx.services, host, agent, instance_files(instance), _half(ctx))
    for key, entry in entries.items():
        ctx.state[f"{key}_sha256"] = entry.sha256


def definition_for(ctx: StepContext, instance: Instance) -> GuestDefinition:
    """The guest definition of ``instance`` (after ``fetch_to``: its digests are in the
    job's state)."""
    return _definition(ctx, instance)


def _half(ctx: StepContext) -> Callable[..., None]:
    """The fetch's progress as the first half of the job's."""

    def report(fraction: float, **more: Any) -> None:
        ctx.report(fraction=fraction * 0.5, **more)

    return report


def _layers(instance: Instance) -> list[dict[str, str]]:
    return list(instance.layers or [])


def config_files(services: Any, instance: Instance) -> dict[str, str]:
    """The config disk of a layered instance: what its initramfs reads (docs/appliances.md),
    the instance's id, and what the other domains add (the guest services: its
    configuration-service token, docs/networks.md)."""
    variables = instance.variables or {}
    files = {
        "variables": "".join(f"{k}\t{v}\n" for k, v in sorted(variables.items())),
        "templates": "".join(f"{path}\n" for path in instance.templates or []),
        "hostname": f"{instance.name}\n",
        "instance": f"{instance.id}\n",
    }
    for more in lifecycle_of(services).config_files:
        files.update(more(services, instance))
    return files


def create_disk(ctx: StepContext) -> None:
    instance, _, agent = _load(ctx)
    if instance.layers is not None:
        guest = instance.domain_name
        size = instance.disk_size_bytes
        agent.disk_create(
            DiskCreate(guest=guest, name=UPPER, size_bytes=size, format="raw", filesystem="ext4")
        )
        files = config_files(ctx.services, instance)
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
    nics_of = lifecycle_of(ctx.services).nics
    with ctx.services.db.read() as s:
        nics = nics_of(s, instance) if nics_of else []
    return GuestDefinition(
        vcpus=instance.vcpus,
        memory_mib=instance.memory_mib,
        kernel=ctx.state.get("kernel_sha256"),
        initrd=ctx.state.get("initrd_sha256"),
        cmdline=instance.cmdline,
        disks=disks,
        nics=nics,
    )


def undefine_guest(ctx: StepContext) -> None:
    instance, _, agent = _load(ctx)
    agent.undefine(instance.domain_name)


def start_guest(ctx: StepContext) -> None:
    instance, _, agent = _load(ctx)
    status = agent.act(instance.domain_name, "start")
    set_instance(
        ctx, status=GUEST_STATES.get(status.state, "running"), started_at=utcnow(), error=None
    )


def destroy_guest(ctx: StepContext) -> None:
    instance, _, agent = _load(ctx)
    try:
        agent.act(instance.domain_name, "destroy")
    except GuestNotFound:
        pass


def mark_error(ctx: StepContext, error: str) -> None:
    set_instance(ctx, status="error", error=error)


# -- start, stop, pause, resume, reboot ---------------------------------------------------


def refresh_layers(ctx: StepContext) -> None:
    """Before a layered instance boots: if a newer substrate has been installed since it last
    booted, fetch it into the host's cache and redefine the guest on it. The application,
    deployment and instance layers stay as they are."""
    instance, _, agent = _load(ctx)
    layered_boot = lifecycle_of(ctx.services).layered_boot
    if instance.layers is None or not instance.appliance_id or layered_boot is None:
        return
    with ctx.services.db.read() as s:
        boot = layered_boot(s, instance)
    now = (boot.kernel, boot.initrd, boot.cmdline, boot.layers)
    if now == (instance.kernel, instance.initrd, instance.cmdline, instance.layers):
        return
    if agent.guest(instance.domain_name).state != "stopped":
        return  # a running guest keeps its layers until it is stopped and started again
    set_instance(
        ctx, kernel=boot.kernel, initrd=boot.initrd, cmdline=boot.cmdline, layers=boot.layers
    )
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
        set_instance(ctx, **values)

    return Step(action, run, timeout=90 if action == "stop" else 60)


def refresh_after_failure(ctx: StepContext, error: str) -> None:
    """A failed action leaves the instance in whatever state its guest is really in."""
    try:
        instance, _, agent = _load(ctx)
        state = GUEST_STATES.get(agent.guest(instance.domain_name).state, "error")
    except Exception:
        state = "error"
    set_instance(ctx, status=state, error=error)


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


def mark_deleted(ctx: StepContext) -> None:
    """The record is deleted, and in the same transaction the other domains free what it
    held (its addresses and forwards: the hosts on its networks are then told, in
    ``disconnect_networks``)."""
    release = lifecycle_of(ctx.services).release
    with ctx.services.db.write() as s:
        instance = s.get(Instance, ctx.params["instance_id"])
        if instance is None:
            return
        for hook in release:
            hook(s, instance, ctx.state)
        instance.status = "deleted"


def register_compute_jobs(registry: JobRegistry, lifecycle: InstanceLifecycle) -> None:
    """Register the instance jobs: compute's steps and those ``lifecycle`` collected from the
    other domains, which must have contributed theirs already."""
    registry.register(
        JobKind(
            "instance.create",
            lifecycle.kind_steps(
                "instance.create",
                (
                    Step("fetch_boot_files", fetch_boot_files, timeout=1800),
                    Step("create_disk", create_disk, remove_disk, timeout=600),
                    Step("define_guest", define_guest, undefine_guest),
                    Step("start_guest", start_guest, destroy_guest),
                ),
            ),
            deadline=3600,
            on_failure=mark_error,
        )
    )
    for action in ("start", "stop", "pause", "resume", "reboot"):
        steps: tuple[Step, ...] = (_action_step(action),)
        if action == "start":
            steps = lifecycle.kind_steps(
                "instance.start", (Step("refresh_layers", refresh_layers, timeout=1800), *steps)
            )
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
            lifecycle.kind_steps(
                "instance.delete",
                (Step("remove_guest", remove_guest, timeout=120), Step("release", mark_deleted)),
            ),
            deadline=300,
            on_failure=mark_error,
        )
    )
