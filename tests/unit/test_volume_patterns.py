"""Volume backends' command patterns: the exact argv of every operation, hostile values refused.

LVM and RBD cannot run on the project's machines (no device-mapper, no Ceph cluster): these
rendered command lines are how they are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamina.agent.patterns import (
    OPERATIONS,
    backend_names,
    load_backend,
    parse_backend,
    parse_info,
)
from lamina.agent.tgt import parse_targets
from lamina.errors import ConfigError, InvalidRequest

VOL = "vol-0123456789abcdef"
SNAP = "snap-fedcba9876543210"
IQN = f"iqn.2026-11.lamina:{VOL}"
TGT_NEW = [
    "tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "new",
    "--tid", "7", "--targetname", IQN,
]  # fmt: skip
#: The session parameters every export sets before its bind (tgt's defaults are 8 KiB).
TGT_UPDATE = [
    [
        "tgtadm",
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "update",
        "--tid",
        "7",
        "--name",
        name,
        "--value",
        value,
    ]  # fmt: skip
    for name, value in (
        ("MaxRecvDataSegmentLength", "262144"),
        ("MaxXmitDataSegmentLength", "262144"),
        ("FirstBurstLength", "262144"),
        ("MaxBurstLength", "1048576"),
        ("InitialR2T", "No"),
    )
]
TGT_BIND = [
    "tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "bind",
    "--tid", "7", "--initiator-address", "192.0.2.10",
]  # fmt: skip
TGT_DELETE = [
    ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "7"]
]
TGT_SHOW = [["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"]]


def tgt_acl(op: str) -> list[list[str]]:
    return [
        ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", op, "--tid", "7",
         "--initiator-address", "192.0.2.10"]
    ]  # fmt: skip


def lun_new(path: str, bstype: str, *flags: str) -> list[str]:
    return [
        "tgtadm", "--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "7",
        "--lun", "1", "--backing-store", path, "--bstype", bstype, *flags,
    ]  # fmt: skip


def params(root: str, path: str, snapshot_path: str, **extra: object) -> dict[str, object]:
    return {
        "root": root,
        "volume": VOL,
        "snapshot": SNAP,
        "name": VOL,
        "path": path,
        "snapshot_path": snapshot_path,
        "size": 1073741824,
        "export_bytes": 1074135040,
        "tid": 7,
        "iqn": IQN,
        "initiator_address": "192.0.2.10",
        **extra,
    }


def render_all(name: str, values: dict[str, object]) -> dict[str, list[list[str]]]:
    backend = load_backend(name)
    return {op: backend.render(op, values) for op in backend.operations}


def test_builtin_backends() -> None:
    assert backend_names() == ["lvm", "qcow2", "raw", "rbd"]
    assert load_backend("qcow2").can_clone and load_backend("lvm").can_clone
    assert load_backend("rbd").can_clone and not load_backend("raw").can_clone
    assert load_backend("qcow2").export_format == "qcow2"
    assert {load_backend(n).export_format for n in ("raw", "lvm", "rbd")} == {"raw"}


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="known: lvm, qcow2, raw, rbd"):
        load_backend("zfs")
    with pytest.raises(ConfigError):
        load_backend("../qcow2")


def test_qcow2_commands() -> None:
    root = "/var/lib/lamina/agent/volumes"
    path, snap = f"{root}/{VOL}.qcow2", f"{root}/{SNAP}.qcow2"
    assert render_all("qcow2", params(root, path, snap)) == {
        "create": [["qemu-img", "create", "-q", "-f", "qcow2", path, "1073741824"]],
        "delete": [["rm", "-f", path]],
        "snapshot": [["qemu-img", "convert", "-U", "-O", "qcow2", path, snap]],
        "delete_snapshot": [["rm", "-f", snap]],
        "create_from_snapshot": [["qemu-img", "convert", "-O", "qcow2", snap, path]],
        "clone_from_snapshot": [
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                snap,
                "-F",
                "qcow2",
                path,
                "1073741824",
            ]  # fmt: skip
        ],
        "extend": [["qemu-img", "resize", "-q", path, "1073741824"]],
        "measure": [
            ["qemu-img", "measure", "--output=json", "-O", "qcow2", "--size", "1073741824"]
        ],
        "pad": [["truncate", "--no-create", "--size=>1074135040", path]],
        "info": [["qemu-img", "info", "-U", "--output=json", path]],
        "export": [TGT_NEW, *TGT_UPDATE, lun_new(path, "rdwr", "--bsoflags", "direct"), TGT_BIND],
        "unexport": TGT_DELETE,
        "show_exports": TGT_SHOW,
        "allow": tgt_acl("bind"),
        "disallow": tgt_acl("unbind"),
    }


def test_raw_commands() -> None:
    root = "/srv/volumes"
    path, snap = f"{root}/{VOL}.raw", f"{root}/{SNAP}.raw"
    assert render_all("raw", params(root, path, snap)) == {
        "create": [["truncate", "--size=1073741824", path]],
        "delete": [["rm", "-f", path]],
        "snapshot": [["cp", "--sparse=always", path, snap]],
        "delete_snapshot": [["rm", "-f", snap]],
        "create_from_snapshot": [["cp", "--sparse=always", snap, path]],
        "extend": [["truncate", "--no-create", "--size=>1073741824", path]],
        "info": [["qemu-img", "info", "-U", "-f", "raw", "--output=json", path]],
        "export": [TGT_NEW, *TGT_UPDATE, lun_new(path, "rdwr", "--bsoflags", "direct"), TGT_BIND],
        "unexport": TGT_DELETE,
        "show_exports": TGT_SHOW,
        "allow": tgt_acl("bind"),
        "disallow": tgt_acl("unbind"),
    }


def test_lvm_commands() -> None:
    backend = load_backend("lvm")
    base = {"vg": "vg0", "pool": "thin0"}
    root = backend.object_path(str(backend.root), base)
    assert root == "/dev/vg0"
    path = backend.object_path(backend.volume_path, {**base, "root": root, "volume": VOL})
    snap = backend.object_path(backend.snapshot_path, {**base, "root": root, "snapshot": SNAP})
    assert (path, snap) == (f"/dev/vg0/{VOL}", f"/dev/vg0/{SNAP}")
    assert render_all("lvm", params(root, path, snap, **base)) == {
        "create": [
            [
                "lvcreate",
                "--yes",
                "--thin",
                "--virtualsize",
                "1073741824b",
                "--name",
                VOL,
                "vg0/thin0",
            ]  # fmt: skip
        ],
        "delete": [["lvremove", "--yes", f"vg0/{VOL}"]],
        "snapshot": [
            [
                "lvcreate",
                "--yes",
                "--snapshot",
                "--setactivationskip",
                "n",
                "--name",
                SNAP,
                f"vg0/{VOL}",
            ]  # fmt: skip
        ],
        "delete_snapshot": [["lvremove", "--yes", f"vg0/{SNAP}"]],
        "create_from_snapshot": [
            [
                "lvcreate",
                "--yes",
                "--thin",
                "--virtualsize",
                "1073741824b",
                "--name",
                VOL,
                "vg0/thin0",
            ],
            [
                "dd",
                f"if=/dev/vg0/{SNAP}",
                f"of=/dev/vg0/{VOL}",
                "bs=4M",
                "conv=sparse,fsync",
                "status=none",
            ],
        ],  # fmt: skip
        "clone_from_snapshot": [
            [
                "lvcreate",
                "--yes",
                "--snapshot",
                "--setactivationskip",
                "n",
                "--name",
                VOL,
                f"vg0/{SNAP}",
            ]  # fmt: skip
        ],
        "extend": [["lvextend", "--yes", "--size", "1073741824b", f"vg0/{VOL}"]],
        "info": [
            [
                "lvs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "--options",
                "lv_size",
                f"vg0/{VOL}",
            ]  # fmt: skip
        ],
        "list": [["lvs", "--noheadings", "--options", "lv_name", "vg0"]],
        "export": [TGT_NEW, *TGT_UPDATE, lun_new(path, "rdwr", "--bsoflags", "direct"), TGT_BIND],
        "unexport": TGT_DELETE,
        "show_exports": TGT_SHOW,
        "allow": tgt_acl("bind"),
        "disallow": tgt_acl("unbind"),
    }
    lvs = '{"report": [{"lv": [{"lv_size": "1073741824"}]}]}'
    assert parse_info(backend, lvs) == (1073741824, 1073741824, None)


def test_rbd_commands() -> None:
    backend = load_backend("rbd")
    base = {"pool": "volumes"}
    root = backend.object_path(str(backend.root), base)
    path = backend.object_path(backend.volume_path, {**base, "root": root, "volume": VOL})
    snap = backend.object_path(backend.snapshot_path, {**base, "root": root, "snapshot": SNAP})
    assert (root, path, snap) == ("volumes", f"volumes/{VOL}", f"volumes/{SNAP}")
    assert render_all("rbd", params(root, path, snap, **base)) == {
        "create": [["rbd", "create", "--size", "1073741824B", f"volumes/{VOL}"]],
        "delete": [["rbd", "rm", "--no-progress", f"volumes/{VOL}"]],
        "snapshot": [
            ["rbd", "cp", "--no-progress", f"volumes/{VOL}", f"volumes/{SNAP}"],
            ["rbd", "snap", "create", "--no-progress", f"volumes/{SNAP}@lamina"],
            ["rbd", "snap", "protect", f"volumes/{SNAP}@lamina"],
        ],
        "delete_snapshot": [
            ["rbd", "snap", "unprotect", f"volumes/{SNAP}@lamina"],
            ["rbd", "snap", "purge", "--no-progress", f"volumes/{SNAP}"],
            ["rbd", "rm", "--no-progress", f"volumes/{SNAP}"],
        ],
        "create_from_snapshot": [
            ["rbd", "cp", "--no-progress", f"volumes/{SNAP}@lamina", f"volumes/{VOL}"]
        ],
        "clone_from_snapshot": [["rbd", "clone", f"volumes/{SNAP}@lamina", f"volumes/{VOL}"]],
        "extend": [["rbd", "resize", "--no-progress", "--size", "1073741824B", f"volumes/{VOL}"]],
        "info": [["rbd", "info", "--format", "json", f"volumes/{VOL}"]],
        "list": [["rbd", "ls", "volumes"]],
        "export": [TGT_NEW, *TGT_UPDATE, lun_new(f"volumes/{VOL}", "rbd"), TGT_BIND],
        "unexport": TGT_DELETE,
        "show_exports": TGT_SHOW,
        "allow": tgt_acl("bind"),
        "disallow": tgt_acl("unbind"),
    }
    info = json.dumps({"size": 2147483648, "parent": {"pool": "volumes", "image": SNAP}})
    assert parse_info(backend, info) == (2147483648, 2147483648, SNAP)


# -- hostile values --------------------------------------------------------------------------

ROOT = "/srv/volumes"
GOOD = params(ROOT, f"{ROOT}/{VOL}.qcow2", f"{ROOT}/{SNAP}.qcow2")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("path", "/etc/passwd"),  # outside the root
        ("path", f"{ROOT}/../etc/shadow"),
        ("path", f"{ROOT}/sub/{VOL}.qcow2"),  # not directly inside
        ("path", f"{ROOT}/a b"),
        ("path", f"{ROOT}/x;rm -rf /"),
        ("path", f"{ROOT}/$(reboot)"),
        ("snapshot_path", "/tmp/snap.qcow2"),
        ("volume", "vol-1234abcd; rm -rf /"),
        ("volume", "--help"),
        ("volume", "vol-XYZ12345"),
        ("volume", SNAP),
        ("snapshot", VOL),
        ("size", "-1"),
        ("size", "10G"),
        ("size", "0"),
        ("size", "1 2"),
        ("tid", "0"),
        ("tid", "--force"),
        ("iqn", "iqn.2026-11.lamina:vol 1"),
        ("iqn", "-iqn"),
        ("initiator_address", "ALL"),
        ("initiator_address", "127.0.0.1 --force"),
        ("initiator_address", "-1"),
        ("root", "--root"),
        ("root", "/srv/a b"),
        ("vg", "-vg"),
        ("vg", "vg 0"),
        ("pool", "pool;ls"),
        ("pool", "-p"),
        ("export_bytes", "1e9"),
    ],
)
def test_hostile_values_are_refused(key: str, value: str) -> None:
    # Every value passed is checked, whether the operation uses it or not.
    backend = load_backend("qcow2")
    with pytest.raises(InvalidRequest):
        backend.render("export", {**GOOD, key: value})


def test_unknown_parameter_and_operation_are_refused() -> None:
    backend = load_backend("qcow2")
    with pytest.raises(InvalidRequest, match="unknown command parameter"):
        backend.render("create", {**GOOD, "shell": "sh"})
    with pytest.raises(InvalidRequest, match="no 'clone_from_snapshot'"):
        load_backend("raw").render("clone_from_snapshot", GOOD)
    missing = {k: v for k, v in GOOD.items() if k != "size"}
    with pytest.raises(InvalidRequest, match="'size' is missing"):
        backend.render("create", missing)


def test_a_value_stays_one_argument() -> None:
    # A path with characters a shell would split is refused, never split; a good value is
    # exactly one element.
    argv = load_backend("qcow2").render("delete", GOOD)
    assert argv == [["rm", "-f", f"{ROOT}/{VOL}.qcow2"]]


def minimal(**operations: object) -> dict[str, object]:
    ops: dict[str, object] = {op: [["true"]] for op in OPERATIONS}
    ops.update(operations)
    return {
        "name": "x",
        "export_format": "raw",
        "volume_path": "{root}/{volume}",
        "snapshot_path": "{root}/{snapshot}",
        "operations": ops,
    }


def test_bad_pattern_files_are_refused() -> None:
    parse_backend(minimal())
    with pytest.raises(ValueError, match="unknown placeholder"):
        parse_backend(minimal(create=[["echo", "{command}"]]))
    with pytest.raises(ValueError, match="program may not be a placeholder"):
        parse_backend(minimal(create=[["{path}", "x"]]))
    with pytest.raises(ValueError, match="list of strings"):
        parse_backend(minimal(create=["rm -rf {path}"]))
    with pytest.raises(ValueError, match="unknown operation"):
        parse_backend(minimal(format=[["mkfs"]]))
    data = minimal()
    del data["operations"]["delete"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="missing: delete"):
        parse_backend(data)


def test_a_pattern_file_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\nexport_format = "raw"\nvolume_path = "{root}/{volume}"\n'
        'snapshot_path = "{root}/{snapshot}"\n[operations]\n'
        + "".join(f'{op} = [["true"]]\n' for op in sorted(OPERATIONS))
    )
    assert load_backend("mine", path).name == "mine"
    path.write_text("name = [")
    with pytest.raises(ConfigError, match="mine.toml"):
        load_backend("mine", path)


def test_parse_qemu_img_info() -> None:
    backend = load_backend("qcow2")
    out = (
        '{"virtual-size": 1073741824, "actual-size": 200704, '
        f'"backing-filename": "/srv/volumes/{SNAP}.qcow2"}}'
    )
    assert parse_info(backend, out) == (1073741824, 200704, f"/srv/volumes/{SNAP}.qcow2")


SHOW = """\
Target 1: iqn.2026-11.lamina:vol-00000001
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2008-11.org.linux-kvm: alias: host
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            Backing store type: rdwr
            Backing store path: /srv/volumes/vol-00000001.qcow2
            Backing store flags: 
    Account information:
    ACL information:
        127.0.0.2
Target 12: iqn.2001-04.com.example:other
    System information:
        Driver: iscsi
    LUN information:
        LUN: 0
            Backing store path: None
    Account information:
    ACL information:
"""  # noqa: W291


def test_parse_tgtadm_show() -> None:
    first, other = parse_targets(SHOW)
    assert first.tid == 1 and first.iqn == "iqn.2026-11.lamina:vol-00000001"
    assert first.luns == {1: "/srv/volumes/vol-00000001.qcow2"}
    assert first.acl == ("127.0.0.2",)
    assert (other.tid, other.iqn, other.luns, other.acl) == (
        12,
        "iqn.2001-04.com.example:other",
        {},
        (),
    )
    assert parse_targets("") == []
