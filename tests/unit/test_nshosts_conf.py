"""The files a namespace host's libvirtd and QEMU read, with and without its migration
certificate (``lamina.launcher.nshosts``); the daemons reading them for real:
tests/integration/test_migration_tls.py."""

from __future__ import annotations

import pytest

from lamina.launcher.nshosts import NamespaceHost, libvirtd_conf, qemu_conf


def host(name: str, address: str, pki: str = "") -> NamespaceHost:
    return NamespaceHost(name=name, netns=f"t-{name}", address=address, root="/x", pki=pki)


def test_plain_hosts_listen_on_tcp_only_on_their_address() -> None:
    conf = libvirtd_conf("10.99.0.11")
    assert "listen_tls = 0\n" in conf and "listen_tcp = 1\n" in conf
    assert 'listen_addr = "10.99.0.11"' in conf
    assert host("h1", "10.99.0.11").migration_uri == "qemu+tcp://10.99.0.11/system"


def test_tls_hosts_listen_with_their_certificate_and_no_tcp() -> None:
    conf = libvirtd_conf("10.99.0.11", "/p")
    assert "listen_tls = 1\n" in conf and "listen_tcp = 0\n" in conf
    assert 'key_file = "/p/serverkey.pem"' in conf
    assert 'cert_file = "/p/servercert.pem"' in conf
    assert 'ca_file = "/p/cacert.pem"' in conf
    assert "auth_tcp" not in conf and "no_verify" not in conf


def test_qemu_sends_migrations_to_the_hosts_address_over_forced_tls() -> None:
    assert "migration_host" not in qemu_conf()
    plain = qemu_conf(host("h1", "10.99.0.11"))
    assert 'migration_host = "10.99.0.11"' in plain and "migrate_tls" not in plain
    tls = qemu_conf(host("h1", "10.99.0.11", "/p"))
    assert 'migrate_tls_x509_cert_dir = "/p"' in tls
    assert "migrate_tls_x509_verify = 1\n" in tls and "migrate_tls_force = 1\n" in tls


def test_a_source_reaches_a_tls_peer_with_its_own_certificate() -> None:
    h1, h2 = host("h1", "10.99.0.11", "/a/pki"), host("h2", "10.99.0.12", "/b/pki")
    assert h2.migration_uri == "qemu+tls://10.99.0.12/system"
    assert h1.peer_uri(h2) == "qemu+tls://10.99.0.12/system?pkipath=/a/pki"
    assert host("h3", "10.99.0.13").peer_uri(host("h4", "10.99.0.14")) == (
        "qemu+tcp://10.99.0.14/system"
    )
    with pytest.raises(RuntimeError, match="no certificate"):
        host("h3", "10.99.0.13").peer_uri(h2)
