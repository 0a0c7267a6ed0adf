"""HTTPS settings: ``manager.tls`` and its files are checked with errors naming the key, and
the "ca" certificate carries the right names and is made again only when they change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509

from lamina.client.tls import verifying_context
from lamina.config import load_settings
from lamina.errors import ConfigError
from lamina.identity.ca import CertificateAuthority
from lamina.identity.transport import check_key_pair, manager_tls, server_names
from lamina.wire.tls import key_pem, make_csr, new_key


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("LAMINA_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def _pair(ca: CertificateAuthority, directory: Path) -> tuple[Path, Path]:
    key = new_key()
    cert = ca.sign(
        make_csr(key, "127.0.0.1"), common_name="127.0.0.1", sans=["127.0.0.1"], server=True
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert)
    (directory / "key.pem").write_bytes(key_pem(key))
    return directory / "cert.pem", directory / "key.pem"


def test_tls_is_off_by_default_and_makes_the_url_https() -> None:
    assert load_settings().manager.tls == "off"
    assert load_settings().manager.url == "http://127.0.0.1:8775"
    assert load_settings(manager={"tls": "ca"}).manager.url == "https://127.0.0.1:8775"
    everywhere = load_settings(manager={"tls": "ca", "host": "0.0.0.0"})
    assert everywhere.manager.url == "https://127.0.0.1:8775"  # a name the certificate has


def test_environment_sets_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_MANAGER__TLS", "files")
    monkeypatch.setenv("LAMINA_MANAGER__TLS_CERT", "/etc/lamina/cert.pem")
    monkeypatch.setenv("LAMINA_MANAGER__TLS_KEY", "/etc/lamina/key.pem")
    manager = load_settings().manager
    assert (manager.tls, manager.tls_cert, manager.tls_key) == (
        "files",
        Path("/etc/lamina/cert.pem"),
        Path("/etc/lamina/key.pem"),
    )


@pytest.mark.parametrize(
    ("manager", "message"),
    [
        ({"tls": "https"}, "invalid setting manager.tls (file key or $LAMINA_MANAGER__TLS)"),
        (
            {"tls": "files", "tls_key": "/k.pem"},
            "invalid setting manager.tls_cert (file key or $LAMINA_MANAGER__TLS_CERT): "
            'Value error, required when manager.tls is "files"',
        ),
        ({"tls": "files", "tls_cert": "/c.pem"}, "invalid setting manager.tls_key"),
        (
            {"tls": "ca", "public_url": "http://manager.example.org:8775"},
            "manager.public_url (http://manager.example.org:8775) is not https://",
        ),
    ],
)
def test_bad_tls_settings_name_the_key(manager: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(manager=manager)
    assert message in err.value.message


def test_server_names() -> None:
    assert server_names("127.0.0.1", None) == ["127.0.0.1", "::1", "localhost"]
    assert server_names("0.0.0.0", "https://cloud.example.org/") == [
        "127.0.0.1",
        "::1",
        "localhost",
        "cloud.example.org",
    ]
    assert server_names("10.0.0.2", "https://10.0.0.2:8775") == ["10.0.0.2"]
    assert server_names("manager.lan", None) == ["manager.lan"]


def test_ca_certificate_is_made_once_and_again_when_the_names_change(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", manager={"tls": "ca"})
    tls = manager_tls(settings)
    assert tls is not None
    cert_path, key_path = tls
    assert cert_path == key_path == tmp_path / "data" / "ca" / "server.pem"
    assert cert_path.stat().st_mode & 0o777 == 0o600
    first = cert_path.read_bytes()
    check_key_pair(cert_path, key_path)
    cert = x509.load_pem_x509_certificate(first)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}

    assert manager_tls(settings) == tls and cert_path.read_bytes() == first  # kept
    manager_tls(settings, host="10.1.2.3")  # `lamina serve --host 10.1.2.3`
    moved = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = moved.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]


def test_files_are_checked_naming_the_setting(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    cert, key = _pair(ca, tmp_path / "a")
    _, other_key = _pair(ca, tmp_path / "b")
    check_key_pair(cert, key)
    settings = load_settings(manager={"tls": "files", "tls_cert": cert, "tls_key": key})
    assert manager_tls(settings) == (cert, key)

    with pytest.raises(ConfigError, match=r"manager\.tls_key .*is not the key of the certificate"):
        check_key_pair(cert, other_key)
    with pytest.raises(ConfigError, match=r"manager\.tls_cert .*cannot read"):
        check_key_pair(tmp_path / "missing.pem", key)
    with pytest.raises(ConfigError, match=r"manager\.tls_cert .*not a PEM certificate"):
        check_key_pair(key, key)
    with pytest.raises(ConfigError, match=r"LAMINA_MANAGER__TLS_KEY.*not a PEM private key"):
        check_key_pair(cert, cert)


def test_clients_never_skip_verification(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    ctx = verifying_context(ca.cert_path)
    assert ctx.check_hostname and ctx.verify_mode.name == "CERT_REQUIRED"
    assert verifying_context(None).check_hostname
    with pytest.raises(ConfigError, match="cannot load the CA certificate"):
        verifying_context(tmp_path / "nowhere.pem")
