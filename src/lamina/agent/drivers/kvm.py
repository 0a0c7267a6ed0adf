"""Find out whether KVM really works on this host.

``/dev/kvm`` existing is not enough: under broken nested virtualization a KVM guest runs the
firmware (SeaBIOS prints its banner) and then hangs or resets as soon as it switches to
protected mode with paging. So the probe boots a tiny guest of our own that does exactly
that — enables paging, writes 96 MiB of memory, checks the last word written — then prints a
marker on QEMU's ``isa-debugcon`` port and powers off through ``isa-debug-exit``. KVM counts as
usable only if the marker arrives within the timeout. On a working host the probe takes a
fraction of a second.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import struct
import tempfile

from lamina.commands import run
from lamina.errors import CommandFailed, CommandTimeout

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
KVM_DEVICE = "/dev/kvm"
MARKER = b"LAMINA-KVM-PROBE-OK\n"

_LOAD = 0x100000  # the probe is loaded (and linked) at 1 MiB
_DEBUGCON_PORT = 0x402
_EXIT_PORT = 0xF4


def _probe_image() -> bytes:
    """A flat multiboot (a.out kludge) image QEMU loads with ``-kernel``.

    Multiboot enters it in 32-bit protected mode with paging off. Assembled by hand so the
    probe needs no toolchain; the GNU as source is in the comments.
    """
    magic, flags = 0x1BADB002, 0x00010000  # bit 16: the address fields below are valid
    entry = _LOAD + 32
    header = struct.pack(
        "<IIIIIIII",
        magic,
        flags,
        (-(magic + flags)) & 0xFFFFFFFF,
        _LOAD,  # header_addr
        _LOAD,  # load_addr
        0,  # load_end_addr: the whole file
        0,  # bss_end_addr: none
        entry,
    )
    code = b"".join(
        [
            # page directory at 2 MiB: 1024 identity-mapped 4 MiB pages (PSE)
            bytes.fromhex("bf00002000"),  # mov $0x200000, %edi
            bytes.fromhex("b883000000"),  # mov $0x83, %eax  (present|rw|4M)
            bytes.fromhex("b900040000"),  # mov $1024, %ecx
            bytes.fromhex("8907"),  # 1: mov %eax, (%edi)
            bytes.fromhex("0500004000"),  # add $0x400000, %eax
            bytes.fromhex("83c704"),  # add $4, %edi
            bytes.fromhex("e2f4"),  # loop 1b
            bytes.fromhex("0f20e083c8100f22e0"),  # cr4 |= PSE
            bytes.fromhex("b8000020000f22d8"),  # cr3 = 0x200000
            bytes.fromhex("0f20c00d000000800f22c0"),  # cr0 |= PG
            # write 96 MiB: 4 passes over 24 MiB at 4 MiB, the last pass writes 1s
            bytes.fromhex("bb04000000"),  # mov $4, %ebx
            bytes.fromhex("bf00004000"),  # 2: mov $0x400000, %edi
            bytes.fromhex("b900006000"),  # mov $0x600000, %ecx  (dwords)
            bytes.fromhex("89d8"),  # mov %ebx, %eax
            bytes.fromhex("f3ab"),  # rep stosl
            bytes.fromhex("4b"),  # dec %ebx
            bytes.fromhex("75ef"),  # jnz 2b
            bytes.fromhex("833dfcffbf0101"),  # cmpl $1, 0x1bffffc
            bytes.fromhex("7510"),  # jne 3f  (no marker if memory is wrong)
            b"\xbe" + struct.pack("<I", _LOAD + 32 + 0x70),  # mov $msg, %esi
            b"\xb9" + struct.pack("<I", len(MARKER)),  # mov $len, %ecx
            b"\x66\xba" + struct.pack("<H", _DEBUGCON_PORT),  # mov $0x402, %dx
            bytes.fromhex("f36e"),  # rep outsb
            b"\x66\xba" + struct.pack("<H", _EXIT_PORT),  # 3: mov $0xf4, %dx
            bytes.fromhex("31c0ee"),  # xor %eax, %eax; out %al, %dx  (QEMU exits)
            bytes.fromhex("f4ebfd"),  # 4: hlt; jmp 4b
        ]
    )
    if len(code) > 0x70:  # pragma: no cover - guards the hand-computed msg address
        raise AssertionError("probe code overlaps its message")
    return header + code.ljust(0x70, b"\x90") + MARKER


def probe_argv(accel: str, image: str, qemu: str = QEMU_BINARY) -> list[str]:
    """The QEMU command line that boots the probe image with accelerator ``accel``."""
    return [
        qemu,
        "-accel",
        accel,
        "-machine",
        "pc",
        "-m",
        "128",
        "-no-reboot",  # a triple fault ends QEMU instead of looping through resets
        "-nographic",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-chardev",
        "stdio,id=dbg",
        "-device",
        f"isa-debugcon,chardev=dbg,iobase={_DEBUGCON_PORT:#x}",
        "-device",
        f"isa-debug-exit,iobase={_EXIT_PORT:#x},iosize=1",
        "-kernel",
        image,
    ]


def probe_accel(accel: str, timeout: float = 3.0) -> bool:
    """Boot the probe guest with QEMU accelerator ``accel`` ('kvm', 'tcg'); True if it ran
    to the end within ``timeout`` seconds. False when QEMU is missing."""
    qemu = shutil.which(QEMU_BINARY)
    if qemu is None:
        log.info("%s not found; accelerator %s not probed", QEMU_BINARY, accel)
        return False
    with tempfile.TemporaryDirectory(prefix="lamina-kvm-probe-") as tmp:
        image = os.path.join(tmp, "probe.bin")
        with open(image, "wb") as f:
            f.write(_probe_image())
        argv = probe_argv(accel, image, qemu)
        try:
            # isa-debug-exit ends QEMU with (0 << 1) | 1 = 1 whether or not the marker was
            # printed, and QEMU exits 1 too when it cannot start the accelerator: only the
            # probe's marker counts. The output also has SeaBIOS's debug log, and QEMU's own
            # errors (merged) so that the log below says why.
            out = run(argv, timeout, ok=(0, 1), merge_stderr=True)
        except CommandTimeout:
            log.info("accelerator %s: probe guest did not finish within %.1fs", accel, timeout)
            return False
        except CommandFailed as exc:
            log.info("accelerator %s: probe guest failed: %s", accel, exc.message)
            return False
    ok = MARKER.decode() in out
    if not ok:
        log.info("accelerator %s: probe guest failed: %s", accel, out.strip()[-300:])
    return ok


@functools.cache
def kvm_usable(timeout: float = 3.0) -> bool:
    """True if KVM guests really run here (checked once per process)."""
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        log.info("%s missing or not accessible: KVM unusable", KVM_DEVICE)
        return False
    usable = probe_accel("kvm", timeout)
    log.info("KVM %s", "usable" if usable else "unusable (guests hang); use TCG")
    return usable
