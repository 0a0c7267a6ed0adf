"""A host's networks: it converges to the state the manager pushes (``PUT /network``).

For each network: a bridge with the host's service address (and a VLAN device on the
uplink, and a VXLAN device to the other hosts of the network), a dnsmasq, the
configuration-service relay; for all of them, the nftables tables.
What the state does not list is removed. The state is stored in
``<agent>/networks/state.json`` and applied again when the agent starts; dnsmasq outlives
the agent (it is found again by its pid file), the relays are the agent's threads.
"""

from __future__ import annotations

import builtins
import ipaddress
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from lamina.agent import bridges, firewall
from lamina.agent.dnsmasq import Dnsmasq, check_spec, choose_run_as, find_dnsmasqs, render, stop_pid
from lamina.agent.netns import COMMAND_TIMEOUT, check_namespace_name, ensure_namespace
from lamina.agent.relay import Relay, close_all, upstream_tls
from lamina.commands import run
from lamina.errors import ConfigError, InvalidRequest, LaminaError, NetworkFailed
from lamina.wire.protocol import NETWORK_ID, NetworkInfo, NetworkSpec, NetworkState, bridge_name

log = logging.getLogger(__name__)

STATE = "state.json"
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+-]+$")


@dataclass(frozen=True)
class NetworkConfig:
    """The ``[agent]`` settings of the host's networks."""

    #: The network namespace of the bridges, dnsmasq and relays; "" for the host's own.
    namespace: str = ""
    #: The 802.1Q trunk of networks with a VLAN id; "" for none.
    uplink: str = ""
    #: This host's underlay address for VXLAN tunnels; "" for the one the manager sends
    #: (the host part of the address it knows the agent by).
    tunnel_address: str = ""


def check_state(state: NetworkState) -> dict[str, NetworkSpec]:
    """Network id -> spec of a state, or ``InvalidRequest`` naming what is wrong."""
    specs: dict[str, NetworkSpec] = {}
    bridges_seen: dict[str, str] = {}
    for spec in state.networks:
        if spec.network in specs:
            raise InvalidRequest(f"network {spec.network} is listed twice")
        bridge = bridge_name(spec.network)
        if bridge in bridges_seen:
            raise InvalidRequest(
                f"networks {bridges_seen[bridge]} and {spec.network} would share bridge {bridge}"
            )
        check_spec(spec)
        for address in [spec.local or "", *spec.peers]:
            if address:
                try:
                    ipaddress.IPv4Address(address)
                except ValueError:
                    raise InvalidRequest(
                        f"network {spec.network}: tunnel address {address!r} is not IPv4"
                    ) from None
        for other in specs.values():
            if ipaddress.ip_network(other.cidr).overlaps(ipaddress.ip_network(spec.cidr)):
                raise InvalidRequest(
                    f"networks {other.network} ({other.cidr}) and {spec.network} "
                    f"({spec.cidr}) overlap"
                )
        if spec.config_service_url is not None and not re.match(
            r"^https?://[^\s/]+(/\S*)?$", spec.config_service_url
        ):
            raise InvalidRequest(f"network {spec.network}: bad config_service_url")
        specs[spec.network] = spec
        bridges_seen[bridge] = spec.network
    return specs


class NetworkHost:
    """The networks of this host (one instance per agent)."""

    def __init__(
        self,
        root: Path,
        config: NetworkConfig,
        tls_dir: Path,
        deployment: Callable[[], str | None] = lambda: None,
    ) -> None:
        check_namespace_name(config.namespace)
        self.root = root
        #: The deployment bridges are tagged with (``lamina.agent.identity``).
        self.deployment = deployment
        self.namespace = config.namespace
        self.uplink = config.uplink
        self.tunnel_address = config.tunnel_address
        self.tls_dir = tls_dir
        self._specs: dict[str, NetworkSpec] = {}
        self._relays: dict[str, Relay] = {}
        self._lock = threading.RLock()

    # -- state -------------------------------------------------------------------------

    def networks(self) -> dict[str, NetworkSpec]:
        """The networks this host should have (the last state applied)."""
        with self._lock:
            return dict(self._specs)

    def _store(self, state: NetworkState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{STATE}.tmp"
        with tmp.open("w") as f:
            f.write(state.model_dump_json(indent=1))
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(self.root / STATE)

    def stored(self) -> NetworkState | None:
        try:
            return NetworkState.model_validate_json((self.root / STATE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.error("cannot read %s: %s", self.root / STATE, exc)
            return None

    # -- converging ----------------------------------------------------------------------

    def apply(self, state: NetworkState) -> list[NetworkInfo]:
        """Make the host have exactly ``state``'s networks; answer them. Idempotent.

        Raises ``InvalidRequest`` for a bad state (nothing is changed), ``NetworkFailed``
        naming each network that could not be brought up (the others are up; the state is
        stored, so the next apply, or the agent's next start, tries again)."""
        specs = check_state(state)
        folder = str(self.root.resolve())
        if not _SAFE_PATH.fullmatch(folder):
            raise ConfigError(
                f"the agent's data folder {folder!r} has characters dnsmasq's files cannot hold"
            )
        with self._lock:
            ensure_namespace(self.namespace)
            previous = self.stored()
            # Untagged bridges this agent made before bridges were tagged: its own too.
            made = {bridge_name(s.network) for s in previous.networks} if previous else set()
            self._store(state)
            self._specs = specs
            failures: dict[str, str] = {}
            # The firewall first: a new bridge is never up without it.
            try:
                self._firewall(list(specs.values()))
            except (LaminaError, OSError) as exc:
                failures["firewall"] = _message(exc)
            self._remove_others(set(specs), made)
            found = bridges.links(self.namespace)
            for spec in specs.values():
                try:
                    self._converge(spec, found)
                except (LaminaError, OSError) as exc:
                    log.error("network %s (%s): %s", spec.name, spec.network, _message(exc))
                    failures[spec.network] = _message(exc)
            if failures:
                names = "; ".join(
                    f"{key} ({specs[key].name}): {why}" if key in specs else f"{key}: {why}"
                    for key, why in failures.items()
                )
                raise NetworkFailed(f"networks not brought up: {names}", networks=failures)
            return self._infos()

    def _local(self, spec: NetworkSpec) -> str | None:
        """The underlay address of the network's VXLAN device; None: no device (the
        network is on this host only, or no tunnel address is known)."""
        local = self.tunnel_address or spec.local
        return local if spec.vni is not None and spec.peers and local else None

    def _tunnels(self, spec: NetworkSpec) -> tuple[str, ...]:
        """The bridge's ports to other hosts, as they will be."""
        ports = []
        if self._local(spec) is not None:
            ports.append(bridges.vxlan_name(spec.network))
        if spec.vlan is not None and self.uplink:
            ports.append(bridges.vlan_device(self.uplink, spec.vlan))
        return tuple(ports)

    def _firewall(self, specs: list[NetworkSpec]) -> None:
        rules = [
            firewall.FirewallNetwork(
                bridge_name(s.network),
                s.cidr,
                s.address,
                s.mode,
                mac=bridges.bridge_mac(s.network),
                tunnels=self._tunnels(s),
            )  # fmt: skip
            for s in specs
        ]
        nft = firewall.nft_argv(self.namespace)
        if not specs:
            run(nft, COMMAND_TIMEOUT, input=firewall.render_removal())
        else:
            run(nft, COMMAND_TIMEOUT, input=firewall.render_ruleset(rules))
        # The bridge table: before a tunnel joins a bridge. Without tunnels it is only
        # removed, which a kernel without nftables' bridge family may refuse: harmless.
        try:
            run(nft, COMMAND_TIMEOUT, input=firewall.render_bridge_ruleset(rules))
        except LaminaError as exc:
            if any(r.tunnels for r in rules):
                raise
            log.debug("no bridge table to remove: %s", exc.message)
        if any(s.mode == "nat" for s in specs):
            run(firewall.ip_forward_argv(self.namespace), COMMAND_TIMEOUT)

    def _converge(self, spec: NetworkSpec, found: dict[str, bridges.Link]) -> None:
        bridge = bridge_name(spec.network)
        address = bridges.interface_address(spec.address, spec.cidr)
        mac = bridges.bridge_mac(spec.network)
        alias = bridges.bridge_alias(self.deployment(), spec.network)
        bridges.run_all(
            bridges.bridge_commands(self.namespace, bridge, mac, address, found.get(bridge), alias)
        )
        if spec.vlan is not None and self.uplink:
            bridges.run_all(
                bridges.vlan_commands(self.namespace, self.uplink, spec.vlan, bridge, found)
            )
        device, local = bridges.vxlan_name(spec.network), self._local(spec)
        if local is not None and spec.vni is not None:
            bridges.ensure_vxlan(self.namespace, device, spec.vni, local, bridge, spec.peers)
        else:
            bridges.remove_vxlan(self.namespace, device, found)
        folder = self.root / spec.network
        folder.mkdir(parents=True, exist_ok=True)
        files = render(spec, folder.resolve(), choose_run_as(folder), self.namespace)
        pid, done = Dnsmasq(folder.resolve(), self.namespace).converge(files)
        if done != "unchanged":
            log.info("network %s: dnsmasq %d %s", spec.name, pid, done)
        self._converge_relay(spec)

    def _converge_relay(self, spec: NetworkSpec) -> None:
        relay = self._relays.get(spec.network)
        url = spec.config_service_url
        if relay is not None and (url is None or not relay.matches(spec.address, url)):
            relay.close()
            del self._relays[spec.network]
            relay = None
        if url is not None and relay is None:
            relay = Relay(
                spec.network, spec.address, url, self.namespace, upstream_tls(self.tls_dir)
            )
            try:
                relay.start()
            except OSError:
                relay.close()
                raise
            self._relays[spec.network] = relay

    def _remove_others(self, keep: set[str], made: set[str]) -> None:
        """Remove every network's bridge, dnsmasq, relay and folder not in ``keep``. Only
        this deployment's bridges go: tagged with its id, or untagged ones in ``made`` (its
        last stored state); another Lamina's on the same host (or namespace) stay."""
        for network in [n for n in self._relays if n not in keep]:
            self._relays.pop(network).close()
        found = bridges.links(self.namespace)
        kept_bridges = {bridge_name(n) for n in keep}
        mine = self.deployment()
        for bridge in bridges.lamina_bridges(found):
            if bridge in kept_bridges:
                continue
            owner = bridges.alias_deployment(found[bridge].alias)
            if (owner is not None and owner != mine) or (owner is None and bridge not in made):
                log.info("leaving bridge %s alone: deployment %s made it", bridge, owner or "?")
                continue
            log.info("removing bridge %s", bridge)
            bridges.run_all(bridges.removal_commands(self.namespace, bridge, found))
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if (
                    folder.is_dir()
                    and re.fullmatch(NETWORK_ID, folder.name)
                    and folder.name not in keep
                ):
                    Dnsmasq(folder.resolve(), self.namespace).stop()
                    shutil.rmtree(folder, ignore_errors=True)
        # A dnsmasq whose folder is gone (removed by hand, or a crash in between).
        for pid, conf in find_dnsmasqs(self.root.resolve()).items():
            if conf.parent.name not in keep:
                log.warning("stopping stray dnsmasq %d (%s)", pid, conf)
                stop_pid(pid, conf)

    # -- reading -----------------------------------------------------------------------

    def _infos(self) -> list[NetworkInfo]:
        found = bridges.links(self.namespace) if self._specs else {}
        infos = []
        for spec in self._specs.values():
            vlan = None
            if spec.vlan is not None and self.uplink:
                name = f"{self.uplink}.{spec.vlan}"
                vlan = name if name in found else None
            relay = self._relays.get(spec.network)
            device = bridges.vxlan_name(spec.network)
            vxlan = device if device in found else None
            infos.append(
                NetworkInfo(
                    network=spec.network,
                    bridge=bridge_name(spec.network),
                    namespace=self.namespace,
                    address=spec.address,
                    dnsmasq_pid=Dnsmasq((self.root / spec.network).resolve(), self.namespace).pid(),
                    relay=relay.listening if relay is not None else None,
                    vlan_device=vlan,
                    vxlan_device=vxlan,
                    peers=sorted(spec.peers) if vxlan else [],
                )
            )
        return infos

    def list(self) -> list[NetworkInfo]:
        """The networks this host has, as they are now (``dnsmasq_pid`` None when its
        dnsmasq does not run, ``relay`` None when no relay listens)."""
        with self._lock:
            return self._infos()

    # -- agent start and stop -----------------------------------------------------------

    def restore(self) -> None:
        """Apply the stored state again (at the agent's start); failures are logged. The
        namespace is made (if missing) even without networks: forwards connect into it."""
        state = self.stored()
        if state is None:
            try:
                ensure_namespace(self.namespace)
            except LaminaError as exc:
                log.error("network namespace %s: %s", self.namespace, exc.message)
            return
        try:
            self.apply(state)
        except LaminaError as exc:
            log.error("restoring the networks: %s", exc.message)

    def plug(
        self, taps: builtins.list[tuple[str, str]], missing_ok: bool = False
    ) -> builtins.list[str]:
        """Put guests' taps ``(tap, network)`` into their networks' bridges (see
        ``bridges.plug_taps``); taps of networks this host does not have are left alone."""
        with self._lock:
            wanted = [(tap, net) for tap, net in taps if net in self._specs]
        if not wanted:
            return []
        return bridges.plug_taps(self.namespace, wanted, missing_ok)

    def close(self) -> None:
        """Stop the relays (dnsmasq keeps running: a restarted agent finds it again)."""
        with self._lock:
            close_all(self._relays)


def _message(exc: BaseException) -> str:
    if isinstance(exc, LaminaError):
        return exc.message
    return str(exc) or type(exc).__name__
