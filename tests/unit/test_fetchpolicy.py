"""The fetch policy (issue 12, items 1 and 4): which addresses and host paths Lamina may
fetch from on a user's behalf, and the safe defaults."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from lamina import fetchpolicy
from lamina.config import Settings
from lamina.errors import InvalidRequest, LocationUnavailable, PathForbidden
from lamina.fetchpolicy import FetchPolicy, check_path, open_path, refused

PRIVATE = FetchPolicy(allow_private=True)


def test_the_defaults_refuse_private_addresses_and_host_paths(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.images.http_allow_private is False
    assert settings.channels.allow_private is False
    assert settings.compute.boot_paths == ()
    # The repository's files reach hosts through the manager, never by a path into its
    # folders: the agent reads no host path unless an administrator lists boot folders.
    assert settings.fetch_roots == ()
    both = Settings(data_dir=tmp_path, compute={"boot_paths": ["/srv/kernels"]})
    assert both.fetch_roots == (Path("/srv/kernels"),)
    assert FetchPolicy().allow_private is False


@pytest.mark.parametrize(
    ("address", "always", "unless_allowed"),
    [
        ("127.0.0.1", False, True),
        ("10.1.2.3", False, True),
        ("172.16.0.1", False, True),
        ("192.168.1.1", False, True),
        ("100.64.0.1", False, True),  # CGNAT
        ("::1", False, True),
        ("fd00::1", False, True),
        ("::ffff:10.0.0.1", False, True),  # IPv4-mapped
        ("::ffff:127.0.0.1", False, True),
        ("::7f00:1", False, True),  # IPv4-compatible 127.0.0.1
        ("64:ff9b::7f00:1", False, True),  # NAT64 of 127.0.0.1
        ("2002:c0a8:101::1", False, True),  # 6to4 of 192.168.1.1
        ("169.254.169.254", True, True),  # metadata services: refused even when allowed
        ("::ffff:169.254.169.254", True, True),
        ("::a9fe:a9fe", True, True),
        ("64:ff9b::a9fe:a9fe", True, True),
        ("2002:a9fe:a9fe::1", True, True),
        ("fd00:ec2::254", True, True),
        ("100.100.100.200", True, True),
        ("169.254.1.1", True, True),
        ("fe80::1", True, True),
        ("0.0.0.0", True, True),
        ("::", True, True),
        ("224.0.0.1", True, True),
        ("ff02::1", True, True),
        ("240.0.0.1", True, True),  # reserved
        ("255.255.255.255", True, True),
        ("93.184.216.34", False, False),
        ("2606:2800:220:1:248:1893:25c8:1946", False, False),
        ("::ffff:93.184.216.34", False, False),
        ("64:ff9b::5db8:d822", False, False),
    ],
)
def test_which_addresses_are_refused(address: str, always: bool, unless_allowed: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert refused(ip) is unless_allowed
    assert refused(ip, PRIVATE) is always


@pytest.mark.parametrize(
    "spelling", ["2130706433", "0x7f000001", "017700000001", "127.1", "localhost", "[::1]"]
)
def test_other_spellings_of_loopback_resolve_to_it_and_are_refused(spelling: str) -> None:
    with pytest.raises(LocationUnavailable) as refused_:
        fetchpolicy.check_reachable(f"http://{spelling}:8775/health", FetchPolicy())
    assert refused_.value.message == "the location could not be fetched"
    assert refused_.value.status == 400 and refused_.value.code == "location_unavailable"


def test_a_spelling_httpx_cannot_parse_is_not_fetched() -> None:
    with pytest.raises(InvalidRequest, match="not a valid URL"):
        fetchpolicy.check_reachable("http://0177.0.0.1/health", PRIVATE)


def test_a_name_with_one_private_address_among_public_ones_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    addresses = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.1")]
    monkeypatch.setattr(fetchpolicy, "_resolver", lambda host, port: addresses)
    with pytest.raises(LocationUnavailable):
        fetchpolicy.check_reachable("https://images.example/k", FetchPolicy())


@pytest.mark.parametrize(
    "url", ["ftp://h/x", "file:///etc/passwd", "http://u:p@h/x", "http:///x", "not a url"]
)
def test_malformed_urls_are_refused_before_any_lookup(url: str) -> None:
    with pytest.raises(InvalidRequest) as refused_:
        fetchpolicy.check_reachable(url, PRIVATE)
    assert refused_.value.code == "invalid_request"


# -- host paths ------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.img").write_bytes(b"ok")
    (tmp_path / "secret").write_bytes(b"secret")
    (folder / "escape").symlink_to(tmp_path / "secret")
    (folder / "inside").symlink_to(folder / "ok.img")
    return folder


def test_paths_are_resolved_before_the_check(root: Path) -> None:
    assert check_path(root / "ok.img", [root]) == root / "ok.img"
    assert check_path(root / "sub" / ".." / "ok.img", [root]) == root / "ok.img"
    assert check_path(root / "inside", [root]) == root / "ok.img"
    for path in (
        root / "escape",
        root / "sub" / ".." / ".." / "secret",
        root / "missing",
        root,
        Path("/etc/shadow"),
        Path("relative"),
    ):
        with pytest.raises(PathForbidden) as refused_:
            check_path(path, [root])
        assert refused_.value.status == 403 and refused_.value.code == "path_forbidden"
    with pytest.raises(PathForbidden):
        check_path(root / "ok.img", [])


def test_open_path_opens_only_regular_files_inside(root: Path) -> None:
    fd, info = open_path(root / "ok.img", [root])
    try:
        assert os.read(fd, 10) == b"ok" and info.st_size == 2
    finally:
        os.close(fd)
    os.mkfifo(root / "fifo")
    for path in (root / "fifo", root / "sub", root / "escape", Path("/dev/zero")):
        with pytest.raises(PathForbidden):
            open_path(path, [root, Path("/dev")])


def test_local_sources() -> None:
    assert fetchpolicy.local_path("/a/b") == Path("/a/b")
    assert fetchpolicy.local_path("file:///a/b%20c") == Path("/a/b c")
    assert fetchpolicy.local_path("FILE://localhost/a") == Path("/a")
    assert fetchpolicy.local_path("https://h/a") is None
    with pytest.raises(InvalidRequest):
        fetchpolicy.local_path("file://otherhost/a")
    assert fetchpolicy.is_local("File:/etc/shadow") and not fetchpolicy.is_local("kernel-1")


@pytest.mark.parametrize("value", [["relative"], ["/"]])
def test_boot_paths_and_fetch_roots_are_absolute_folders(value: list[str]) -> None:
    with pytest.raises(ValueError, match="boot_paths"):
        Settings(compute={"boot_paths": value})
    with pytest.raises(ValueError, match="fetch_roots"):
        Settings(agent={"fetch_roots": value})
