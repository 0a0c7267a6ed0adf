"""``lamina instance``'s own logic, without a manager: what deleting an instance destroys, and
the console's lines kept whole across reads."""

from __future__ import annotations

from typing import Any

import pytest

from lamina.cli import instance as cli

ASKFIRST = "Please press Enter to activate this console."


class FakeConsole:
    """A client whose console log arrives in the given pieces, one per read."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.reads: list[int] = []

    def console(self, ref: str, offset: int) -> dict[str, Any]:
        self.reads.append(offset)
        done = sum(len(p) for p in self.pieces[: len(self.reads) - 1])
        assert offset == done
        index = len(self.reads) - 1
        data = self.pieces[index] if index < len(self.pieces) else ""
        return {"data": data, "offset": offset + len(data)}


class Obj:
    def __init__(self, client: FakeConsole) -> None:
        self.client = client


def lines(pieces: list[str], follow: bool = False) -> list[str]:
    return list(cli.console_lines(Obj(FakeConsole(pieces)), "vm", follow))  # type: ignore[arg-type]


def test_console_lines_are_whole_whatever_the_reads() -> None:
    assert lines(["boot: one\nboot: t", "wo\nboot: th", "ree\n"]) == [
        "boot: one\n",
        "boot: two\n",
        "boot: three\n",
    ]


def test_console_leaves_out_busybox_s_prompt_and_keeps_what_follows_it() -> None:
    shown = lines(["ready\n\n" + ASKFIRST[:20], ASKFIRST[20:] + " hello\n", ASKFIRST + " "])
    assert shown == ["ready\n", "\n", "hello\n"]


def test_console_shows_an_unfinished_last_line() -> None:
    assert lines(["a\nlogin: "]) == ["a\n", "login: "]


def test_following_shows_an_unfinished_line_once_it_has_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "PARTIAL_AFTER", 0.0)
    monkeypatch.setattr("time.sleep", lambda _: None)
    found = cli.console_lines(Obj(FakeConsole(["a\nlog", "in: "])), "vm", True)  # type: ignore[arg-type]
    assert [next(found), next(found)] == ["a\n", "login: "]


def test_deleting_names_disks_volumes_ports_and_addresses() -> None:
    data = {
        "disk_image": "img-1", "disk_size_bytes": 2 << 30, "layers": None,
        "volumes": [
            {"id": "vol-1", "name": "data", "device": "vdb", "size_bytes": 1 << 30},
            {"id": None, "name": None, "device": "vdc", "size_bytes": 1 << 20},
        ],
        "networks": [{"network": "lan", "ip": "10.0.0.5"}],
    }  # fmt: skip
    forwards = [{"address": "127.0.0.1:8080", "guest": "10.0.0.5:80"}]
    assert cli.destroyed(data, forwards) == [
        "its root disk (2.0 GiB)",
        "detaches volume data (vol-1) (vdb, 1.0 GiB; kept)",
        "detaches volume (another user's volume) (vdc, 1.0 MiB; kept)",
        "published port 127.0.0.1:8080 -> 10.0.0.5:80",
        "address 10.0.0.5 on lan",
    ]
    layered: dict[str, Any] = {"layers": [], "disk_size_bytes": None, "volumes": [], "networks": []}
    assert cli.destroyed(layered, []) == [
        "its writable layer (its image's size) and configuration disk"
    ]
    assert cli.destroyed({"disk_image": None, "disk_size_bytes": None}, []) == [
        "no disk (it boots from a kernel)"
    ]
