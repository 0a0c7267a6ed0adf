#!/usr/bin/env bash
# Build Lamina's bundled sample guest from Debian packages:
#   OUTDIR/vmlinuz     the newest Debian kernel from /boot (linux-image-amd64)
#   OUTDIR/vmlinux     the same kernel decompressed (ELF with a PVH entry point):
#                      QEMU boots it directly, ~2.5 s instead of ~5.3 s under TCG,
#                      because the bzImage's own XZ decompression is slow under TCG.
#                      Only written when the kernel is XZ-compressed (Debian amd64).
#   OUTDIR/initrd.img  a gzip'd cpio (newc) busybox initramfs (busybox-static)
# Booted with "console=ttyS0" the guest prints
#   lamina-sample: booted <kernel version>
# on the serial console, then "lamina-sample: uptime <seconds>" every 10 s, forever.
# Idempotent and fast: skips the build when the outputs match the inputs.
# Writes nothing outside OUTDIR.
# Usage: scripts/build-sample-guest.sh OUTDIR
set -euo pipefail

log() { echo "build-sample-guest: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

(($# == 1)) || die "usage: $0 OUTDIR"
outdir=$1
script="$(readlink -f "${BASH_SOURCE[0]}")"
busybox=/bin/busybox

# Newest kernel by version order (not mtime: dpkg keeps the package's mtimes).
kernel="$(find /boot -maxdepth 1 -name 'vmlinuz-*' -type f -printf '%f\n' | sort -V | tail -n 1)"
[[ -n "$kernel" ]] || die "no /boot/vmlinuz-* found; install linux-image-amd64"
kernel="/boot/${kernel}"
[[ -r "$kernel" ]] || die "cannot read $kernel (run as root: Debian kernels are mode 0600)"
[[ -x "$busybox" ]] || die "$busybox not found; install busybox-static"
# A dynamically linked busybox (package "busybox") would need its libraries in
# the initramfs; ldd succeeds only for dynamic executables.
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; install busybox-static"
fi

mkdir -p "$outdir"
stamp="${outdir}/.sample-guest.stamp"

# Identity of every input. Compared as a whole, so a different kernel, busybox
# or script version triggers a rebuild even when its mtime is older than ours.
inputs="$(
    stat -c '%n %s %Y' "$kernel" "$(readlink -f "$busybox")"
    sha256sum <"$script"
)"

# The stamp's last line records whether vmlinux could be extracted, so a
# deleted vmlinux is rebuilt but a kernel without XZ payload is not retried.
if [[ -f "${outdir}/vmlinuz" && -f "${outdir}/initrd.img" && -f "$stamp" ]] \
    && [[ "$(head -n -1 "$stamp")" == "$inputs" ]]; then
    case "$(tail -n 1 "$stamp")" in
        "vmlinux: none") exit 0 ;;
        "vmlinux: yes") [[ -f "${outdir}/vmlinux" ]] && exit 0 ;;
    esac
fi

log "building sample guest in ${outdir} from ${kernel}"
# Build in a scratch folder inside OUTDIR, then rename into place, so an
# interrupted build never leaves a half-written initrd behind.
work="$(mktemp -d "${outdir}/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="${work}/root"

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
cp "$busybox" "$root/bin/busybox"
# Applet symlinks at build time: no writable-rootfs step needed at boot.
while read -r applet; do
    [[ -e "$root/$applet" ]] || ln -s /bin/busybox "$root/$applet"
done < <("$busybox" --list-full)

# /init runs as PID 1 and must never exit (the kernel would panic).
cat >"$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The console is ttyS0 when the kernel command line says console=ttyS0.
exec </dev/console >/dev/console 2>&1
echo "lamina-sample: booted $(uname -r)"
while :; do
    sleep 10
    read -r up _ </proc/uptime
    echo "lamina-sample: uptime ${up%.*}"
done
INIT
chmod 0755 "$root/init"

# newc is the only cpio format the kernel unpacks; files owned by root in the guest.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -6 >"${work}/initrd.img"
cp "$kernel" "${work}/vmlinuz"

# Extract the XZ payload of the bzImage (what scripts/extract-vmlinux in the
# kernel tree does). --single-stream ignores the bytes after the payload; the
# process substitution keeps tail's SIGPIPE out of pipefail.
rm -f "${outdir}/vmlinux"
offset="$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$kernel" | head -n 1 | cut -d: -f1 || true)"
if [[ -n "$offset" ]] \
    && xz -dcq --single-stream <(tail -c +$((offset + 1)) "$kernel") >"${work}/vmlinux" 2>/dev/null \
    && [[ "$(head -c 4 "${work}/vmlinux" | od -An -tx1 | tr -d ' ')" == "7f454c46" ]]; then
    mv -f "${work}/vmlinux" "${outdir}/vmlinux"
    vmlinux_state=yes
else
    vmlinux_state=none
    log "WARNING: could not extract an uncompressed kernel from ${kernel}; only vmlinuz is available"
fi

mv -f "${work}/vmlinuz" "${outdir}/vmlinuz"
mv -f "${work}/initrd.img" "${outdir}/initrd.img"
printf '%s\nvmlinux: %s\n' "$inputs" "$vmlinux_state" >"$stamp"
