"""Two deployments' agents with networks in one network namespace (issue 12, item 11): each
tags its bridges with its deployment id, and converging one's networks never removes the
other's bridge. Real bridges and dnsmasq, in a namespace the test makes."""

from __future__ import annotations

from pathlib import Path

import pytest
from namespaces import Namespaces

from lamina.agent import bridges
from lamina.agent.networks import NetworkConfig, NetworkHost
from lamina.wire.protocol import NetworkSpec, NetworkState, bridge_name

pytestmark = pytest.mark.integration
A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
NET_A, NET_B = "net-c3c3c3c3c3c3c3c3", "net-d4d4d4d4d4d4d4d4"


def network(network: str, octet: int) -> NetworkSpec:
    return NetworkSpec(
        network=network,
        name=f"n{octet}",
        cidr=f"10.{octet}.0.0/24",
        address=f"10.{octet}.0.1",
        mode="isolated",
        domain=f"n{octet}.lamina.internal",
    )


def test_one_deployments_networks_never_remove_anothers_bridge(
    namespaces: Namespaces, tmp_path: Path
) -> None:
    namespace = namespaces.make("shared")
    config = NetworkConfig(namespace=namespace)
    first = NetworkHost(tmp_path / "a", config, tmp_path / "a-tls", lambda: A)
    second = NetworkHost(tmp_path / "b", config, tmp_path / "b-tls", lambda: B)
    try:
        first.apply(NetworkState(networks=[network(NET_A, 81)]))
        second.apply(NetworkState(networks=[network(NET_B, 82)]))
        found = bridges.links(namespace)
        assert found[bridge_name(NET_A)].alias == f"lamina:{A}:{NET_A}"
        assert found[bridge_name(NET_B)].alias == f"lamina:{B}:{NET_B}"

        # The first deployment drops its network: only its own bridge goes.
        first.apply(NetworkState(networks=[]))
        found = bridges.links(namespace)
        assert bridge_name(NET_A) not in found
        assert bridge_name(NET_B) in found

        # And it never takes the other's bridge over.
        with pytest.raises(Exception, match=f"belongs to Lamina deployment {B}"):
            first.apply(NetworkState(networks=[network(NET_B, 82)]))
        assert bridges.links(namespace)[bridge_name(NET_B)].alias == f"lamina:{B}:{NET_B}"
    finally:
        for host in (first, second):
            try:
                host.apply(NetworkState(networks=[]))
            finally:
                host.close()
