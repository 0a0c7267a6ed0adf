"""The channel feed: RSS 2.0 written and read back, relative URLs, and feeds refused with the
line and element of the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.channels.build import mkfs_erofs_argv, mksquashfs_argv
from lamina.channels.feed import NS, Feed, FileRef, Item, parse_feed, write_feed
from lamina.errors import NotFound
from lamina.formats.versions import Version
from lamina.formats.xmlsafe import XMLInvalid

FEED_URL = "http://channel.example/sample/channel.rss"
KEY = "ed25519:" + "A" * 43 + "="


def ref(role: str, digit: str, *urls: str, format: str | None = None) -> FileRef:
    sha = digit * 64
    return FileRef(
        role=role,  # type: ignore[arg-type]
        sha256=sha,
        size=int(digit, 16) * 1000,
        signature="c2lnbmF0dXJl",
        urls=urls or (f"http://a.example/files/{sha}", f"http://b.example/m/files/{sha}"),
        format=format,
    )


def item(name: str, version: str, kind: str = "application", digit: str = "1") -> Item:
    return Item(
        name=name,
        version=Version.parse(version),
        kind=kind,  # type: ignore[arg-type]
        label=f"The {name}",
        description="Serves one page." if kind == "application" else "",
        definition=ref("definition", digit),
        files=(ref("layer", "e", format="squashfs"),),
    )


FEED = Feed(
    title="sample",
    link="http://channel.example/sample/",
    description="Lamina appliance channel sample",
    public_key=KEY,
    items=(
        item("webserv", "1.0.0-0"),
        item("webserv", "1.10.0-0", digit="2"),
        item("webserv", "1.9.0-0", digit="3"),
        item("debian-base", "12.5", kind="substrate", digit="4"),
    ),
)


def test_a_feed_reads_back_as_written() -> None:
    data = write_feed(FEED)
    assert data.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<rss ")
    assert f'xmlns:lamina="{NS}"'.encode() in data
    assert b"<title>The webserv 1.0.0-0</title>" in data
    assert b'<enclosure url="http://a.example/files/' in data
    assert parse_feed(data, FEED_URL) == FEED


def test_relative_urls_are_relative_to_the_feed() -> None:
    sha = "1" * 64
    relative = Feed(
        "t",
        "./",
        "d",
        KEY,
        (
            Item(
                "web",
                Version.parse("1"),
                "traditional",
                "Web",
                "",
                ref("definition", "1", f"files/{sha}", f"/mirror/{sha}", "https://c.example/x"),
                (),
            ),
        ),
    )
    parsed = parse_feed(write_feed(relative), FEED_URL)
    assert parsed.items[0].definition.urls == (
        f"http://channel.example/sample/files/{sha}",
        f"http://channel.example/mirror/{sha}",
        "https://c.example/x",
    )


def test_finding_an_item_takes_the_newest_version() -> None:
    assert str(FEED.find("webserv").version) == "1.10.0-0"
    assert FEED.find("webserv", "1.9.0").definition.sha256 == "3" * 64
    with pytest.raises(NotFound, match="no appliance webserv 2"):
        FEED.find("webserv", "2")
    with pytest.raises(NotFound):
        FEED.find("mail")


def _feed(items: str, channel_extra: str = "") -> bytes:
    return (
        f'<?xml version="1.0"?>\n<rss version="2.0" xmlns:lamina="{NS}">\n<channel>\n'
        "<title>t</title>\n<link>./</link>\n<description>d</description>\n"
        f"<lamina:key>{KEY}</lamina:key>\n{channel_extra}{items}</channel>\n</rss>\n"
    ).encode()


SHA = "ab" * 32
GOOD_FILE = (
    f'<lamina:file role="definition" sha256="{SHA}" size="10" signature="eA==">\n'
    f"<lamina:url>files/{SHA}</lamina:url>\n</lamina:file>\n"
)
APPLIANCE = '<lamina:appliance name="web" version="1.0" kind="application"/>\n'


def _item(*parts: str) -> str:
    return "<item>\n<title>x</title>\n" + "".join(parts) + "</item>\n"


def test_a_minimal_feed_parses() -> None:
    feed = parse_feed(_feed(_item(APPLIANCE, GOOD_FILE)), FEED_URL)
    assert feed.items[0].definition.urls == (f"http://channel.example/sample/files/{SHA}",)
    assert feed.items[0].label == "" and feed.items[0].files == ()


@pytest.mark.parametrize(
    ("document", "line", "element", "words"),
    [
        (b"<feed/>", 1, "feed", 'an <rss version="2.0"> document'),
        (_feed("").replace(b"<title>t</title>\n", b""), 3, "channel", "exactly one <title>"),
        (
            _feed("").replace(b"lamina:key>", b"key>"),
            3,
            "channel",
            "exactly one <lamina:key>",
        ),
        (_feed(_item(GOOD_FILE)), 8, "item", "exactly one <lamina:appliance>"),
        (_feed(_item(APPLIANCE)), 8, "item", "exactly one file with role definition"),
        (
            _feed(_item(APPLIANCE.replace("application", "vm"), GOOD_FILE)),
            10,
            "appliance",
            "kind 'vm'",
        ),
        (
            _feed(_item(APPLIANCE.replace("1.0", "one"), GOOD_FILE)),
            10,
            "appliance",
            "'one' is not a version",
        ),
        (
            _feed(_item(APPLIANCE.replace('name="web"', 'name="../x"'), GOOD_FILE)),
            10,
            "appliance",
            "name='../x'",
        ),
        (_feed(_item(APPLIANCE, GOOD_FILE.replace(SHA, "xyz", 1))), 11, "file", "sha256='xyz'"),
        (_feed(_item(APPLIANCE, GOOD_FILE.replace('"10"', '"-1"'))), 11, "file", "size='-1'"),
        (
            _feed(_item(APPLIANCE, GOOD_FILE.replace(' signature="eA=="', ""))),
            11,
            "file",
            "signature=None",
        ),
        (_feed(_item(APPLIANCE, GOOD_FILE.replace("definition", "rootkit"))), 11, "file", "role"),
        (
            _feed(_item(APPLIANCE, GOOD_FILE.replace(f"files/{SHA}", "file:///etc/passwd"))),
            12,
            "url",
            "not an http(s) URL",
        ),
        (
            _feed(_item(APPLIANCE, GOOD_FILE.replace(f"files/{SHA}", "http://[::1/x"))),
            12,
            "url",
            "'http://[::1/x' is not an http(s) URL",
        ),
        (
            _feed(_item(APPLIANCE, GOOD_FILE.replace(f"<lamina:url>files/{SHA}</lamina:url>", ""))),
            11,
            "file",
            "at least one <lamina:url>",
        ),
        (
            _feed(_item(APPLIANCE, GOOD_FILE) + _item(APPLIANCE, GOOD_FILE)),
            15,
            "item",
            "web 1.0 is listed twice",
        ),
    ],
)
def test_a_wrong_feed_names_line_and_element(
    document: bytes, line: int, element: str, words: str
) -> None:
    with pytest.raises(XMLInvalid) as info:
        parse_feed(document, FEED_URL)
    error = info.value
    assert (error.line, error.element) == (line, element), error.message
    assert error.message.startswith(f"channel feed, line {line}, <{element}>: ")
    assert words in error.message


def test_a_hostile_feed_is_refused() -> None:
    laughs = (
        b'<?xml version="1.0"?>\n<!DOCTYPE rss [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n<rss version="2.0">&b;</rss>'
    )
    with pytest.raises(XMLInvalid, match="channel feed, line 2: DTDs"):
        parse_feed(laughs, FEED_URL)
    with pytest.raises(XMLInvalid, match="channel feed, line 2: not well-formed"):
        parse_feed(b'<rss version="2.0">\n<channel></rss>', FEED_URL)


def test_layer_images_are_built_reproducibly() -> None:
    assert mksquashfs_argv(Path("src/layer"), Path("out/x")) == [
        "mksquashfs", "src/layer", "out/x", "-noappend", "-reproducible", "-all-root",
        "-mkfs-time", "0", "-all-time", "0", "-no-xattrs", "-quiet", "-no-progress",
    ]  # fmt: skip
    assert mkfs_erofs_argv(Path("src/layer"), Path("out/x")) == [
        "mkfs.erofs", "--quiet", "-T0", "--all-root", "-x-1",
        "-U", "00000000-0000-0000-0000-000000000000", "out/x", "src/layer",
    ]  # fmt: skip
