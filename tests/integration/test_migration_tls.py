"""Libvirt migration traffic between namespace hosts, authenticated by Lamina's CA.

Two hosts of a lab enrol their agents with a real manager; each agent gets its migration
certificate at enrolment, and the host's libvirtd and QEMU are then configured with it (as
docs/migration-tls.md tells a real host's administrator). A tiny TCG guest moves from h1 to
h2 with ``virsh migrate --live --p2p --tls`` over ``qemu+tls``, and keeps running there;
a migration without TLS, plain TCP, no client certificate and a certificate of another CA
are each refused.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import ROOT, Cloud, wait_until
from hosts import agent_pki

from lamina.agent.migration_tls import write_pki
from lamina.identity.ca import CertificateAuthority
from lamina.launcher.nshosts import Lab
from lamina.wire.pool import AgentPool
from lamina.wire.tls import key_pem, make_csr, new_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    subprocess.run(["bash", str(ROOT / "scripts/build-sample-guest.sh"), str(out)], check=True)
    return out


def guest_xml(name: str, sample: Path, console: Path) -> str:
    """A 128 MiB TCG guest booting the sample kernel and initrd, its serial console a file
    (on the shared filesystem: the destination's QEMU appends to the same file)."""
    kernel = sample / "vmlinux" if (sample / "vmlinux").exists() else sample / "vmlinuz"
    domain = ET.Element("domain", type="qemu")
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory", unit="MiB").text = "128"
    ET.SubElement(domain, "vcpu").text = "1"
    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = str(kernel)
    ET.SubElement(os_el, "initrd").text = str(sample / "initrd.img")
    ET.SubElement(os_el, "cmdline").text = "console=ttyS0"
    ET.SubElement(
        ET.SubElement(domain, "cpu", mode="custom", match="exact"), "model"
    ).text = "qemu64"
    serial = ET.SubElement(ET.SubElement(domain, "devices"), "serial", type="file")
    ET.SubElement(serial, "source", path=str(console))
    ET.SubElement(serial, "target", port="0")
    return ET.tostring(domain, encoding="unicode")


def virsh(lab: Lab, host: str, uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    """virsh inside ``host``, connected to ``uri``; never raises."""
    argv = lab.hosts[host].enter(["virsh", "-c", uri, *args])
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def uptimes(console: Path) -> int:
    return console.read_text(errors="replace").count("lamina-sample: uptime")


def test_a_guest_moves_over_tls_and_peers_without_lamina_certificates_are_refused(
    lab: Lab,
    lab_cloud: Callable[..., Cloud],
    sample: Path,
    tmp_path: Path,
) -> None:
    cloud = lab_cloud(hosts=("h1", "h2"), tls=True)
    h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
    # Each agent got its certificate at enrolment and reports the URI peers use.
    ca = CertificateAuthority(cloud.root / "manager" / "ca")
    pool = AgentPool(ca.client_files())
    try:
        for host in (h1, h2):
            assert host.pki == str(agent_pki(cloud, host))
            info = pool.for_address(f"{host.address}:8776").info()
            assert info.migration_uri == f"qemu+tls://{host.address}/system"
    finally:
        pool.close()
    # The agents still drive their libvirtd after it was restarted with TLS.
    wait_until(
        lambda: (
            {h["name"]: h["status"] for h in cloud.client().hosts()} == {"h1": "up", "h2": "up"}
        ),
        30,
        "both hosts up",
    )
    # libvirtd listens with TLS only (16514), no plain TCP (16509).
    listening = h2.run("ss", "-Hltn")
    assert f"{h2.address}:16514" in listening and ":16509" not in listening

    console = tmp_path / "console.log"
    xml = tmp_path / "guest.xml"
    xml.write_text(guest_xml("tlsguest", sample, console))
    h1.virsh("create", str(xml))
    wait_until(lambda: uptimes(console) >= 1, 120, "the guest's first uptime line")

    dest = h1.peer_uri(h2)
    assert dest == f"qemu+tls://{h2.address}/system?pkipath={h1.pki}"
    # QEMU's stream must be TLS too (migrate_tls_force): without --tls, refused.
    plain = virsh(lab, "h1", "qemu:///system", "migrate", "--live", "--p2p", "tlsguest", dest)
    assert plain.returncode != 0 and "tls" in plain.stderr.lower(), plain.stderr
    moved = virsh(
        lab, "h1", "qemu:///system", "migrate", "--live", "--p2p", "--tls", "tlsguest", dest
    )
    assert moved.returncode == 0, moved.stderr
    assert h1.virsh("list", "--all", "--name").split() == []
    assert h2.virsh("domstate", "tlsguest").strip() == "running"
    # Still the same guest, still counting, now on h2.
    before = uptimes(console)
    wait_until(lambda: uptimes(console) > before, 60, "an uptime line from h2")
    stats = h2.virsh("domjobinfo", "tlsguest", "--completed")
    assert "Incoming migration" in stats, stats

    # Refused: peers without a certificate of the CA, and plain TCP.
    tls_uri = f"qemu+tls://{h2.address}/system"
    # Its own certificate: let in.
    ok = virsh(lab, "h1", h1.peer_uri(h2), "list", "--name")
    assert ok.returncode == 0 and ok.stdout.split() == ["tlsguest"], ok.stderr

    # A certificate of another CA for the same name and address, presented by a client that
    # does not check the server (no_verify=1): h2's libvirtd checks it and hangs up.
    other = CertificateAuthority(tmp_path / "other-ca")
    key = new_key()
    cert = other.sign(
        make_csr(key, "h1"), common_name="h1", sans=[h1.address], server=True, client=True
    )
    foreign = tmp_path / "foreign-pki"
    write_pki(foreign, other.cert_pem, cert, key_pem(key))
    refused = virsh(lab, "h1", f"{tls_uri}?pkipath={foreign}&no_verify=1", "uri")
    assert refused.returncode != 0, refused.stdout
    assert "TLS confirmation" in refused.stderr, refused.stderr

    # No client certificate at all: refused the same way.
    bare = tmp_path / "bare-pki"
    bare.mkdir()
    (bare / "cacert.pem").write_bytes((agent_pki(cloud, h1) / "cacert.pem").read_bytes())
    refused = virsh(lab, "h1", f"{tls_uri}?pkipath={bare}", "uri")
    assert refused.returncode != 0 and "TLS confirmation" in refused.stderr, refused.stderr

    # And the other way round: that client, checking the server, refuses h2 (whose
    # certificate that CA did not sign).
    refused = virsh(lab, "h1", f"{tls_uri}?pkipath={foreign}", "uri")
    assert refused.returncode != 0 and "certificate" in refused.stderr, refused.stderr

    # Plain TCP: nothing listens.
    refused = virsh(lab, "h1", f"qemu+tcp://{h2.address}/system", "uri")
    assert refused.returncode != 0 and "Connection refused" in refused.stderr, refused.stderr
