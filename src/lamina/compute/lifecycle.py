"""The instance lifecycle by registration: what the other domains add to an instance's jobs
and to what compute does, without compute importing them.

Networks, volumes, appliances and the guest services build on compute, so compute cannot
call them; they register here instead, once, where the manager is wired
(``lamina.manager.register``):

* **steps** of ``instance.create``, ``instance.start`` and ``instance.delete``
  (``contribute``). Where each step runs is fixed by ``ORDER`` below, not by the order of
  registration: a job's steps are stored by name, and a job interrupted by a restart resumes
  (or is undone) by those names, so a name once used is never renamed or moved;
* **hooks** compute calls at fixed points: the addresses a new instance is given (from the
  NICs its creator asks for), the NICs an instance's description shows, the files of a
  layered instance's config disk, the NICs of its guest, what is released with it when it
  is deleted, what follows when a host comes back up; and the data compute needs from the
  appliances: a layered instance's boot files as of now, and what the appliance an instance
  was deployed from provides;
* **views**: fields the other domains add to an instance's description (its attached
  volumes, the name and version of the appliance it came from), so ``instance show``
  names them without compute knowing their tables.

Each hook is optional: a manager that wires no network simply gives its instances no NICs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from lamina.errors import ConfigError
from lamina.jobs.kinds import JobRegistry, Step

if TYPE_CHECKING:
    from lamina.compute.models import Host, Instance
    from lamina.identity.principal import Principal
    from lamina.wire.protocol import GuestNic

#: Each instance job's steps in the order they run: compute's own (``lamina.compute.jobs``)
#: and those other domains contribute. The names are stored with every job: never rename or
#: reorder one (a job resumes by them after a restart); add new ones.
ORDER: dict[str, tuple[str, ...]] = {
    "instance.create": (
        "fetch_boot_files",
        "create_disk",
        "connect_networks",  # lamina.network
        "define_guest",
        "start_guest",
    ),
    "instance.start": ("refresh_layers", "start"),
    "instance.delete": (
        "remove_guest",
        "remove_forwards",  # lamina.network
        "release_volumes",  # lamina.volumes
        "release",
        "remove_checkpoints",  # lamina.compute.checkpoint_jobs
        "disconnect_networks",  # lamina.network
    ),
}


@dataclass(frozen=True)
class LayeredFiles:
    """What a layered instance boots now: its substrate's kernel and initrd (where its host
    fetches them), its command line, and its read-only layers lowest first
    (``[{"image": id, "source": location, "sha256": digest}]``)."""

    kernel: str
    initrd: str | None
    cmdline: str
    layers: list[dict[str, str]]


@dataclass(frozen=True)
class NicRequest:
    """One NIC asked for: a network (id or name) and optionally its address."""

    network: str
    ip: str | None = None


#: (who, the NICs asked for (None: on the default network, if any), the default network's
#: name) -> what ``lamina.compute.instances.create_instance`` calls, in the transaction that
#: records a new instance, to give it its addresses.
AttachNics = Callable[
    ["Principal", "Sequence[NicRequest] | None", str], Callable[[Session, "Instance"], None]
]
#: (session, instance ids, DNS domain) -> instance id -> its NICs as the API shows them,
#: primary first.
NicViews = Callable[[Session, Sequence[str], str], dict[str, list[dict[str, Any]]]]
#: (services, instance) -> more files of a layered instance's config disk.
ConfigFiles = Callable[[Any, "Instance"], dict[str, str]]
#: (session, instance) -> its guest's NICs, primary first.
Nics = Callable[[Session, "Instance"], "list[GuestNic]"]
#: (session, instance, the job's state) -> None: in the transaction that marks an instance
#: deleted (the ``release`` step), free what it held; what later steps need goes in the state.
Release = Callable[[Session, "Instance", dict[str, Any]], None]
#: (session, job registry, host id) -> None: a host answers again after being down.
HostUp = Callable[[Session, JobRegistry, str], None]
#: (services, instance, source host, destination host) -> None: an instance moving between
#: hosts (``lamina.compute.migration``). ``before_move`` hooks run before the switch (the
#: network on the destination with the instance's DHCP and DNS, volumes exported to it),
#: ``after_move`` hooks after it (forwards re-created on the destination and removed from
#: the source, volumes withdrawn from the source, network state pushed to both), and
#: ``move_aborted`` hooks when a move that ran the ``before_move`` ones is rolled back (the
#: instance stays on the source: undo what they did for the destination). Each is
#: idempotent: a restarted manager may call it again.
MoveHook = Callable[[Any, "Instance", "Host", "Host"], None]
#: (session, instance) -> the boot of a layered instance as of now.
LayeredBoot = Callable[[Session, "Instance"], LayeredFiles]
#: (session, appliance id) -> what that appliance provides (``mail``, ``smtp``, ...).
Provides = Callable[[Session, str], tuple[str, ...]]
#: (session, instances, viewer) -> instance id -> more fields of its description, as the
#: domain that holds them shows them to ``viewer`` (its attached volumes, the appliance it
#: was deployed from). The fields are the view's own: two views never give the same one.
InstanceView = Callable[
    [Session, "Sequence[Instance]", "Principal | None"], dict[str, dict[str, Any]]
]


@dataclass
class InstanceLifecycle:
    """The steps and hooks the other domains registered (see the module's doc)."""

    steps: dict[str, dict[str, Step]] = field(default_factory=dict)
    attach_nics: AttachNics | None = None
    nic_views: NicViews | None = None
    config_files: list[ConfigFiles] = field(default_factory=list)
    nics: Nics | None = None
    release: list[Release] = field(default_factory=list)
    host_up: list[HostUp] = field(default_factory=list)
    layered_boot: LayeredBoot | None = None
    provides: Provides | None = None
    views: list[InstanceView] = field(default_factory=list)
    before_move: list[MoveHook] = field(default_factory=list)
    after_move: list[MoveHook] = field(default_factory=list)
    move_aborted: list[MoveHook] = field(default_factory=list)

    def contribute(self, kind: str, step: Step) -> None:
        """Add ``step`` to the job ``kind`` at the place ``ORDER`` gives its name.
        ConfigError for a name ``ORDER`` does not list, or one already contributed."""
        if step.name not in ORDER.get(kind, ()):
            raise ConfigError(f"{kind} has no place for a step named {step.name!r}")
        if step.name in self.steps.get(kind, {}):
            raise ConfigError(f"step {step.name!r} of {kind} contributed twice")
        self.steps.setdefault(kind, {})[step.name] = step

    def kind_steps(self, kind: str, own: tuple[Step, ...]) -> tuple[Step, ...]:
        """The steps of ``kind``: compute's ``own`` and the contributed ones, in ``ORDER``
        (a place nobody filled is left out). ConfigError if a domain took one of compute's."""
        contributed = self.steps.get(kind, {})
        taken = sorted(s.name for s in own if s.name in contributed)
        if taken:
            raise ConfigError(f"steps {', '.join(taken)} of {kind} are compute's own")
        by_name = {s.name: s for s in own} | contributed
        return tuple(by_name[name] for name in ORDER[kind] if name in by_name)

    def attach(
        self, who: Principal, networks: Sequence[NicRequest] | None, default_network: str
    ) -> Callable[[Session, Instance], None] | None:
        """What gives a new instance its addresses (None: no network is wired)."""
        if self.attach_nics is None:
            return None
        return self.attach_nics(who, networks, default_network)

    def nics_by_instance(
        self, session: Session, instance_ids: Sequence[str], domain: str
    ) -> dict[str, list[dict[str, Any]]]:
        """The NICs of instances as the API shows them (none if no network is wired)."""
        if self.nic_views is None:
            return {}
        return self.nic_views(session, instance_ids, domain)

    def more_fields(
        self, session: Session, instances: Sequence[Instance], viewer: Principal | None
    ) -> dict[str, dict[str, Any]]:
        """Instance id -> the fields every registered view adds to its description."""
        found: dict[str, dict[str, Any]] = {i.id: {} for i in instances}
        for view in self.views:
            for instance_id, fields in view(session, instances, viewer).items():
                found.setdefault(instance_id, {}).update(fields)
        return found

    def appliance_provides(self, session: Session, appliance_id: str) -> tuple[str, ...]:
        return self.provides(session, appliance_id) if self.provides else ()


def lifecycle_of(services: Any) -> InstanceLifecycle:
    """The lifecycle wired into this manager's services; ConfigError if none was."""
    found = getattr(services, "lifecycle", None)
    if not isinstance(found, InstanceLifecycle):
        raise ConfigError("the manager's services have no instance lifecycle wired in")
    return found
