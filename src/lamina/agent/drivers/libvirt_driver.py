"""The libvirt hypervisor driver: QEMU/KVM (or TCG) guests, and libvirt's test driver."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import libvirt

from lamina.agent.drivers import libvirt_saves
from lamina.agent.drivers.base import (
    Capabilities,
    GuestDisk,
    GuestInfo,
    GuestSpec,
    GuestState,
    GuestTags,
    HostInfo,
    Hypervisor,
    MigrationProgress,
    MigrationRequest,
    NetworkDisk,
    SavedGuest,
)
from lamina.agent.drivers.domain_xml import (
    METADATA_NS,
    METADATA_PREFIX,
    METADATA_ROOT,
    disk_elements,
    disk_source,
    domain_tags,
    domain_xml,
    guest_disks,
    network_disk_xml,
    read_tags,
)
from lamina.agent.drivers.kvm import kvm_usable
from lamina.errors import (
    BackendUnavailable,
    Conflict,
    GuestNotFound,
    InvalidRequest,
    InvalidState,
    LaminaError,
    NotSupported,
    Timeout,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_STATES: dict[int, GuestState] = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",  # running, waiting on a resource
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",  # suspended to RAM by the guest itself
    libvirt.VIR_DOMAIN_SHUTDOWN: "stopped",  # shutting down
    libvirt.VIR_DOMAIN_SHUTOFF: "stopped",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
}

# Failures of the connection itself rather than of one call.
_CONNECTION_ERRORS = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_CANCELLED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    }
)
_REQUEST_ERRORS = frozenset(
    {
        libvirt.VIR_ERR_XML_ERROR,
        libvirt.VIR_ERR_XML_DETAIL,
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
        libvirt.VIR_ERR_INVALID_ARG,
    }
)
_UNSUPPORTED_ERRORS = frozenset({libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED})

_SHUTDOWN_POLL_MIN = 0.05  # seconds; the poll backs off to _SHUTDOWN_POLL_MAX
_SHUTDOWN_POLL_MAX = 0.5
_DETACH_POLL = 0.1


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr unless a handler is registered; we raise instead."""


libvirt.registerErrorHandler(_ignore_libvirt_error, None)


def _translate(exc: libvirt.libvirtError, uri: str, guest: str | None) -> LaminaError:
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    details: dict[str, Any] = {"libvirt_code": code}
    if code == libvirt.VIR_ERR_NO_DOMAIN and guest is not None:
        return GuestNotFound(guest)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return InvalidState(message, guest=guest, **details)
    if code in _CONNECTION_ERRORS:
        return BackendUnavailable(f"libvirt at {uri} is unavailable: {message}", **details)
    if code in _REQUEST_ERRORS:
        return InvalidRequest(f"libvirt rejected the request: {message}", guest=guest, **details)
    if code in _UNSUPPORTED_ERRORS:
        return NotSupported(f"not supported by libvirt at {uri}: {message}", **details)
    if code in (libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_ERR_AGENT_UNRESPONSIVE):
        return Timeout(message, guest=guest, **details)
    return LaminaError(f"libvirt: {message}", guest=guest, **details)


def default_domain_type(uri: str) -> str:
    """The domain type to use for ``uri`` when the caller did not choose one."""
    scheme = urlsplit(uri).scheme
    if scheme == "test" or scheme.startswith("test+"):
        return "test"
    if urlsplit(uri).hostname:
        # The KVM probe can only look at this host; a remote one may differ.
        log.warning("remote libvirt URI %s: assuming TCG; set domain_type to use KVM", uri)
        return "qemu"
    return "kvm" if kvm_usable() else "qemu"


def _keep_network_disks(new: str, old: str) -> str:
    """``new`` plus the attached network disks (volumes) of ``old`` at targets ``new`` leaves
    free: redefining a guest must not detach its volumes."""
    taken = disk_elements(new)
    kept = [
        el
        for target, el in disk_elements(old).items()
        if el.get("type") == "network" and target not in taken
    ]
    if not kept:
        return new
    domain = ET.fromstring(new)
    devices = domain.find("devices")
    assert devices is not None
    for el in kept:
        devices.append(el)
    return ET.tostring(domain, encoding="unicode")


class LibvirtHypervisor(Hypervisor):
    """Guests of one libvirt connection (``qemu:///system``, ``test:///default``, ...).

    One connection per instance, opened at construction and reopened if it dies; every call
    on it holds a lock, so an instance may be shared between threads.
    """

    def __init__(self, uri: str = "qemu:///system", domain_type: str | None = None) -> None:
        self.uri = uri
        self._lock = threading.RLock()
        self._conn: libvirt.virConnect | None = None
        # Start times of guests whose driver cannot store metadata: name -> (domain id, time).
        self._started: dict[str, tuple[int, float]] = {}
        with self._lock:
            self._connection()
        self.domain_type = domain_type or default_domain_type(uri)
        self.capabilities = Capabilities(
            domain_type=self.domain_type,
            kvm=self.domain_type == "kvm",
            extra=("reset",),
        )

    # -- plumbing ----------------------------------------------------------------------

    def _connection(self) -> libvirt.virConnect:
        """The open connection; call with the lock held."""
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
            log.warning("libvirt connection to %s lost; reconnecting", self.uri)
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise BackendUnavailable(
                f"cannot connect to libvirt at {self.uri}: {exc.get_error_message() or exc}",
                uri=self.uri,
            ) from exc
        return self._conn

    @contextlib.contextmanager
    def _call(self, guest: str | None = None) -> Iterator[libvirt.virConnect]:
        """Hold the lock and turn libvirt errors into Lamina errors."""
        with self._lock:
            try:
                yield self._connection()
            except libvirt.libvirtError as exc:
                raise _translate(exc, self.uri, guest) from exc

    def _domain(self, conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise GuestNotFound(name) from exc
            raise

    def _with_domain(self, name: str, action: Callable[[libvirt.virDomain], T]) -> T:
        with self._call(name) as conn:
            return action(self._domain(conn, name))

    @staticmethod
    def _state(dom: libvirt.virDomain) -> GuestState:
        state, _reason = dom.state()
        if state == libvirt.VIR_DOMAIN_SHUTOFF and _reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
            return "crashed"  # on_crash=destroy leaves a crashed guest shut off
        return _STATES.get(state, "unknown")

    # -- start time --------------------------------------------------------------------

    def _record_start(self, dom: libvirt.virDomain) -> None:
        now = time.time()
        # setMetadata replaces the whole element: keep the guest's tags in the live one.
        guest = ET.Element(METADATA_ROOT)
        tags = self._tags(dom)
        for key, value in (("deployment", tags.deployment), ("instance", tags.instance)):
            if value:
                ET.SubElement(guest, key).text = value
        if tags.created is not None:
            ET.SubElement(guest, "created").text = repr(tags.created)
        ET.SubElement(guest, "started").text = repr(now)
        try:
            # Live only: the record vanishes when the guest stops, so it is never stale.
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                ET.tostring(guest, encoding="unicode"),
                METADATA_PREFIX,
                METADATA_NS,
                libvirt.VIR_DOMAIN_AFFECT_LIVE,
            )
            self._started.pop(dom.name(), None)
        except libvirt.libvirtError as exc:
            log.info(
                "cannot store start time of %s in libvirt (%s); keeping it in memory",
                dom.name(),
                exc.get_error_message(),
            )
            self._started[dom.name()] = (dom.ID(), now)

    @staticmethod
    def _tags(dom: libvirt.virDomain) -> GuestTags:
        """Who made the guest, from its persistent definition (``GuestTags``)."""
        try:
            xml = dom.metadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG
            )
        except libvirt.libvirtError:
            return GuestTags()  # untagged (or a transient guest)
        try:
            return read_tags(ET.fromstring(xml))
        except ET.ParseError:
            return GuestTags()

    def _start_time(self, dom: libvirt.virDomain) -> float | None:
        try:
            xml = dom.metadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE
            )
        except libvirt.libvirtError:
            xml = None
        if xml:
            started = ET.fromstring(xml).findtext("started")
            if started:
                try:
                    return float(started)
                except ValueError:
                    log.warning("bad start time %r in metadata of %s", started, dom.name())
        remembered = self._started.get(dom.name())
        if remembered is not None and remembered[0] == dom.ID():
            return remembered[1]
        return None  # started outside Lamina: unknown

    def _info(self, dom: libvirt.virDomain) -> GuestInfo:
        state = self._state(dom)
        _st, max_mem_kib, _mem_kib, vcpus, _cpu_time = dom.info()
        uptime = None
        if state in ("running", "paused"):
            started = self._start_time(dom)
            if started is not None:
                uptime = max(time.time() - started, 0.0)
        return GuestInfo(
            name=dom.name(),
            state=state,
            vcpus=vcpus,
            memory_mib=max_mem_kib // 1024,
            uptime_seconds=uptime,
            tags=self._tags(dom),
        )

    # -- the Hypervisor interface ------------------------------------------------------

    def host_info(self) -> HostInfo:
        """CPU and memory of the host as libvirt sees them."""
        with self._call() as conn:
            arch, memory_mib, cpus, *_ = conn.getInfo()
            hostname = conn.getHostname()
            capabilities = conn.getCapabilities()
            qemu = libvirt_saves.version_text(conn.getVersion())
        caps = ET.fromstring(capabilities)
        model = caps.findtext("host/cpu/model") or arch
        host_arch = caps.findtext("host/cpu/arch") or arch
        return HostInfo(
            hostname=hostname,
            vcpus=cpus,
            memory_mib=memory_mib,
            cpu_model=model,
            qemu_version=qemu,
            machine_types=libvirt_saves.machine_types(capabilities, host_arch),
            arch=host_arch,
        )

    def define(self, spec: GuestSpec) -> None:
        """Define the guest persistently; a stopped guest of that name is replaced.

        Raises ``InvalidState`` if a guest of that name is running or paused,
        ``InvalidRequest`` if libvirt rejects the definition.
        """
        with self._call(spec.name) as conn:
            try:
                existing = conn.lookupByName(spec.name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                existing = None
            if existing is not None:
                if existing.isActive():
                    raise InvalidState(
                        f"guest {spec.name!r} is {self._state(existing)}; stop it to redefine",
                        guest=spec.name,
                    )
                if spec.uuid is None:
                    # Without it libvirt refuses: "domain '...' already exists with uuid ...".
                    spec = dataclasses.replace(spec, uuid=existing.UUIDString())
                old = domain_tags(existing.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                if spec.tags is not None and old.created is not None:
                    # Redefined (a layered guest moving to a new substrate): still as old.
                    spec = dataclasses.replace(
                        spec, tags=dataclasses.replace(spec.tags, created=old.created)
                    )
            xml = domain_xml(spec, self.domain_type)
            if existing is not None:
                xml = _keep_network_disks(xml, existing.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            conn.defineXML(xml)

    def start(self, name: str, paused: bool = False) -> None:
        """Boot a defined guest (``VIR_DOMAIN_START_PAUSED`` if ``paused``); a running or
        paused guest is left alone."""

        def start(dom: libvirt.virDomain) -> None:
            if dom.isActive():
                return
            if paused and self.domain_type == "test":
                # The test driver has no START_PAUSED; its guests run no code anyway.
                dom.create()
                dom.suspend()
            else:
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
            self._record_start(dom)

        self._with_domain(name, start)

    def shutdown(self, name: str, timeout: float = 30.0) -> None:
        """Press the guest's ACPI power button, wait up to ``timeout`` seconds for it to
        stop, then force it off. A paused guest is resumed first (it could not react);
        a stopped guest is left alone."""

        def request(dom: libvirt.virDomain) -> bool:
            if not dom.isActive():
                return False
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and not dom.isActive():
                    return False  # it stopped meanwhile
                raise
            return True

        if not self._with_domain(name, request):
            return
        deadline = time.monotonic() + timeout
        delay = _SHUTDOWN_POLL_MIN
        while True:
            # One cheap state query per poll; the lock is free in between.
            try:
                if not self._with_domain(name, lambda dom: bool(dom.isActive())):
                    return
            except GuestNotFound:
                return  # a transient guest vanishes when it stops
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _SHUTDOWN_POLL_MAX)
        log.info("guest %s ignored the ACPI shutdown for %.1fs; forcing it off", name, timeout)
        self.destroy(name)

    def destroy(self, name: str) -> None:
        """Power the guest off at once; a stopped guest is left alone."""

        def destroy(dom: libvirt.virDomain) -> None:
            if not dom.isActive():
                return
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and not dom.isActive():
                    return
                raise

        self._with_domain(name, destroy)
        self._started.pop(name, None)

    def pause(self, name: str) -> None:
        """Suspend the guest's vCPUs; a paused guest is left alone.
        Raises ``InvalidState`` unless the guest is running or paused."""

        def pause(dom: libvirt.virDomain) -> None:
            state = self._state(dom)
            if state == "paused":
                return
            if state != "running":
                raise InvalidState(f"cannot pause guest {name!r}: it is {state}", guest=name)
            dom.suspend()

        self._with_domain(name, pause)

    def resume(self, name: str) -> None:
        """Resume a paused guest; a running guest is left alone.
        Raises ``InvalidState`` unless the guest is paused or running."""

        def resume(dom: libvirt.virDomain) -> None:
            state = self._state(dom)
            if state == "running":
                return
            if state != "paused":
                raise InvalidState(f"cannot resume guest {name!r}: it is {state}", guest=name)
            dom.resume()

        self._with_domain(name, resume)

    def reboot(self, name: str) -> None:
        """Hard-reset a running guest (no guest cooperation needed).
        Raises ``InvalidState`` unless the guest is running."""

        def reboot(dom: libvirt.virDomain) -> None:
            state = self._state(dom)
            if state != "running":
                raise InvalidState(f"cannot reboot guest {name!r}: it is {state}", guest=name)
            dom.reset(0)

        self._with_domain(name, reboot)

    def undefine(self, name: str) -> None:
        """Destroy the guest if it runs and remove its definition; unknown guests are a no-op."""
        with self._call(name) as conn:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                raise
            if dom.isActive():
                dom.destroy()
            self._started.pop(name, None)
            try:
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # transient: gone
                    raise

    def info(self, name: str) -> GuestInfo:
        """State, size and uptime of one guest. Uptime is None for a guest not running or
        paused, and for one started outside Lamina."""
        return self._with_domain(name, self._info)

    def list(self) -> list[GuestInfo]:
        """Every guest libvirt knows on this connection, sorted by name."""
        infos = []
        with self._call() as conn:
            for dom in conn.listAllDomains(0):
                try:
                    infos.append(self._info(dom))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise  # else: undefined while we listed
        return sorted(infos, key=lambda info: info.name)

    # -- disks -------------------------------------------------------------------------
    #
    # libvirt's test driver has no device hot-plug; there (domain type "test") attach and
    # detach edit the persistent definition and disks() reads it.

    def _disk_view(self, dom: libvirt.virDomain) -> str:
        if self.domain_type == "test":
            return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        return str(dom.XMLDesc(0))

    def _edit_definition(
        self, conn: libvirt.virConnect, dom: libvirt.virDomain, add: str | None, remove: str
    ) -> None:
        domain = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        devices = domain.find("devices")
        assert devices is not None
        for disk in list(devices.iterfind("disk")):
            target = disk.find("target")
            if target is not None and target.get("dev") == remove:
                devices.remove(disk)
        if add is not None:
            devices.append(ET.fromstring(add))
        conn.defineXML(ET.tostring(domain, encoding="unicode"))

    def attach_disk(self, name: str, disk: NetworkDisk) -> None:
        """Attach an iSCSI disk, live and persistently (``AFFECT_LIVE | AFFECT_CONFIG``)
        when the guest runs, persistently when it is stopped. The same disk already at
        ``disk.target`` is a no-op; another one there raises ``Conflict``."""
        xml = network_disk_xml(disk)
        with self._call(name) as conn:
            dom = self._domain(conn, name)
            existing = disk_elements(self._disk_view(dom)).get(disk.target)
            if existing is not None:
                if disk_source(existing) == disk.source:
                    return
                raise Conflict(
                    f"guest {name!r} already has a disk at {disk.target} ({disk_source(existing)})",
                    guest=name,
                    target=disk.target,
                )
            if self.domain_type == "test":
                self._edit_definition(conn, dom, xml, disk.target)
                return
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if dom.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.attachDeviceFlags(xml, flags)
        log.info("attached %s to %s as %s", disk.source, name, disk.target)

    def detach_disk(self, name: str, target: str, timeout: float = 30.0) -> None:
        """Detach the disk at ``target``: from the persistent definition at once, and from a
        running guest by ACPI hot-unplug, which the guest must carry out. Waits until the
        disk has left the live definition; raises ``Timeout`` after ``timeout`` seconds (a
        guest that ignores the request keeps the disk until it powers off; detaching again
        asks again). A disk not there is a no-op."""
        with self._call(name) as conn:
            dom = self._domain(conn, name)
            if self.domain_type == "test":
                if target in disk_elements(self._disk_view(dom)):
                    self._edit_definition(conn, dom, None, target)
                return
            persistent = disk_elements(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if target in persistent:
                dom.detachDeviceFlags(
                    ET.tostring(persistent[target], encoding="unicode"),
                    libvirt.VIR_DOMAIN_AFFECT_CONFIG,
                )
            if not dom.isActive():
                return
            live = disk_elements(dom.XMLDesc(0)).get(target)
            if live is None:
                return
            try:
                dom.detachDeviceFlags(
                    ET.tostring(live, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE
                )
            except libvirt.libvirtError as exc:
                # An unplug asked for earlier and still pending: wait for it below.
                log.info("detach of %s from %s: %s", target, name, exc.get_error_message())
        deadline = time.monotonic() + timeout
        while True:
            try:
                present = self._with_domain(
                    name,
                    lambda dom: dom.isActive() and target in disk_elements(dom.XMLDesc(0)),
                )
            except GuestNotFound:
                return
            if not present:
                log.info("detached %s from %s", target, name)
                return
            if time.monotonic() >= deadline:
                raise Timeout(
                    f"guest {name!r} has not released disk {target} within {timeout:g}s "
                    "(hot-unplug needs the guest's cooperation); it is gone from the "
                    "guest's definition and leaves at the next power-off; detach again "
                    "to keep waiting",
                    guest=name,
                    target=target,
                )
            time.sleep(_DETACH_POLL)

    def disks(self, name: str) -> builtins.list[GuestDisk]:
        """The guest's disks: live when it runs, else as defined."""
        return self._with_domain(name, lambda dom: guest_disks(self._disk_view(dom)))

    # -- migration ---------------------------------------------------------------------

    def migratable_xml(self, name: str) -> str:
        """The live definition as the destination accepts it: ``VIR_DOMAIN_XML_MIGRATABLE``
        (plain XML is refused there: its uuid and CPU checks differ), with secrets."""
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
        return self._with_domain(name, lambda dom: str(dom.XMLDesc(flags)))

    def migrate(self, name: str, request: MigrationRequest) -> None:
        """Peer-to-peer live migration (this host's libvirtd drives the destination's):
        ``VIR_MIGRATE_LIVE | PEER2PEER | PERSIST_DEST | UNDEFINE_SOURCE``, with
        ``NON_SHARED_INC`` and ``migrate_disks`` for the disks copied over NBD (their top
        image only: the rest of a chain is the destination's own), ``AUTO_CONVERGE`` and
        ``TLS`` when asked. On its own connection, so the driver's other calls (progress,
        abort) are not held up by it."""
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        )
        # The destination's paths for the running guest and for its persistent definition
        # (without PERSIST_XML libvirt would persist the source's, with the source's paths).
        params: dict[str, Any] = {
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: request.xml,
            libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: request.xml,
        }
        if request.migrate_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = request.migrate_uri
        if request.copy_disks:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(request.copy_disks)
        if request.auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if request.tls:
            flags |= libvirt.VIR_MIGRATE_TLS
        if request.paused:
            flags |= libvirt.VIR_MIGRATE_PAUSED
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise _translate(exc, self.uri, name) from exc
        try:
            dom = self._domain(conn, name)
            with contextlib.suppress(libvirt.libvirtError):
                dom.migrateSetMaxDowntime(request.max_downtime_ms, 0)
            dom.migrateToURI3(request.dest_uri, params, flags)
        except libvirt.libvirtError as exc:
            raise _translate(exc, self.uri, name) from exc
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        self._started.pop(name, None)
        log.info("guest %s migrated to %s", name, request.dest_uri)

    def migration_progress(self, name: str, completed: bool = False) -> MigrationProgress:
        """From ``virDomainGetJobStats`` (``VIR_DOMAIN_JOB_STATS_COMPLETED`` for the last
        finished job: on the destination, its downtime)."""
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0

        def job_stats(dom: libvirt.virDomain) -> dict[str, Any]:
            try:
                return dict(dom.jobStats(flags))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise
                return {}  # not running (any more: the source's guest just left)

        stats: dict[str, Any] = self._with_domain(name, job_stats)
        kind = stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE)

        def n(key: str) -> int:
            return int(stats.get(key) or 0)

        return MigrationProgress(
            active=kind in (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED),
            elapsed_ms=n("time_elapsed"),
            memory_total=n("memory_total"),
            memory_processed=n("memory_processed"),
            memory_remaining=n("memory_remaining"),
            disk_total=n("disk_total"),
            disk_processed=n("disk_processed"),
            disk_remaining=n("disk_remaining"),
            dirty_rate=n("memory_dirty_rate"),
            iteration=n("memory_iteration"),
            downtime_ms=int(stats["downtime"]) if "downtime" in stats else None,
        )

    def set_migration_downtime(self, name: str, milliseconds: int) -> None:
        self._with_domain(name, lambda dom: dom.migrateSetMaxDowntime(milliseconds, 0))

    def abort_migration(self, name: str) -> None:
        """``virDomainAbortJob``; no job running is a no-op."""

        def abort(dom: libvirt.virDomain) -> None:
            try:
                dom.abortJob()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise

        self._with_domain(name, abort)

    def incoming(self, name: str) -> bool:
        def paused_for_migration(dom: libvirt.virDomain) -> bool:
            state, reason = dom.state()
            return bool(
                state == libvirt.VIR_DOMAIN_PAUSED
                and reason
                in (libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)
            )

        return self._with_domain(name, paused_for_migration)

    # -- checkpoints (lamina.agent.drivers.libvirt_saves) -------------------------------

    def checkpoint(self, name: str, memory: Path, while_paused: Callable[[], None]) -> SavedGuest:
        """Pause the guest, save its memory into ``memory`` (an external memory snapshot,
        no disk touched, no metadata kept), run ``while_paused``, resume it if it ran.
        Raises ``InvalidState`` unless it runs or is paused."""
        host_cpu = self.host_info().cpu_model
        with self._call(name) as conn:
            dom = self._domain(conn, name)
            state = self._state(dom)
            if state not in ("running", "paused"):
                raise InvalidState(f"cannot checkpoint guest {name!r}: it is {state}", guest=name)
            return libvirt_saves.checkpoint(
                conn, dom, self.domain_type, host_cpu, memory, while_paused
            )

    def restore(self, spec: GuestSpec, memory: Path, paused: bool = False) -> None:
        """Replace the guest by the one saved in ``memory``, with ``spec``'s paths
        (``virDomainRestoreFlags`` with the save image's XML so changed), defined
        persistently as ``spec``."""
        with self._call(spec.name) as conn:
            libvirt_saves.restore(conn, spec, memory, self.domain_type, paused)
            self._started.pop(spec.name, None)

    def close(self) -> None:
        """Close the libvirt connection (a later call reopens it)."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None
