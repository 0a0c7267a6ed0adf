#!/usr/bin/env bash
# Build the source folder of Lamina's sample channel of layered appliances from
# Debian packages, ready for `lamina channel build OUTDIR/sources --out ... --key ...`:
#   OUTDIR/sources/lamina-base/  kind="substrate", version 1.0.0 (or --substrate-version):
#       rootfs/          busybox-static with applet symlinks, busybox init, an rc that prints
#                        "lamina-base: release|boot <n>|ready" and runs /etc/lamina/start.d/*,
#                        a disk watcher (hot-plugged disks appear and go on the console),
#                        every NIC by DHCP (udhcpc; /etc/resolv.conf links to /run), the
#                        configuration service's client /usr/bin/lamina-config,
#                        acpid (power button -> poweroff) and a shutdown rc (rcK) that leaves
#                        the instance layer's ext4 clean; nf_tables and what it needs under
#                        /lib/modules/<version>/ with their modules.dep, not loaded at boot:
#                        for applications that filter (modprobe nf_tables)
#       boot/vmlinux     the newest /boot/vmlinuz-* decompressed (QEMU boots the ELF by its
#                        PVH entry ~2x faster under TCG); boot/vmlinuz when it cannot be
#       boot/initrd.img  gzip'd cpio (newc): samples/channel/initramfs/init, busybox and the
#                        kernel's modules for virtio disks and NICs, squashfs, erofs, overlay
#                        and ext4, and for the ACPI power button (button, evdev)
#   OUTDIR/sources/webserv/      kind="application": busybox httpd serving a templated page
#   OUTDIR/sources/dnsserv/      kind="application": Debian's dnsmasq and nft, and the libraries
#                                they need
#   OUTDIR/sources/diskprobe/    kind="application": marks hot-plugged block volumes (vol-*)
#   OUTDIR/sources/netprobe/     kind="application": reports names, addresses and the
#                                configuration service it reaches
#   OUTDIR/sources/mailserv/     kind="application": an SMTP sink on port 25 (busybox nc)
#   OUTDIR/sources/ticker/       kind="application": a counter printed on the console every
#                                second (checkpoints and migrations show the guest went on)
# The static parts (init scripts, definitions, templates) are in samples/channel/.
# The boot contract (disks found by virtio serial, kernel command line
# lamina.layers=/lamina.upper=/lamina.config=) is described in samples/channel/initramfs/init.
# Idempotent and fast: skips the build when the outputs match the inputs.
# Writes nothing outside OUTDIR.
# Usage: scripts/build-sample-channel.sh OUTDIR [--substrate-version V]
set -euo pipefail

log() { echo "build-sample-channel: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage="usage: $0 OUTDIR [--substrate-version V]"

outdir=
version=1.0.0
while (($#)); do
    case "$1" in
        --substrate-version) (($# >= 2)) || die "$usage"; version=$2; shift 2 ;;
        --substrate-version=*) version=${1#*=}; shift ;;
        -*) die "$usage" ;;
        *) [[ -z "$outdir" ]] || die "$usage"; outdir=$1; shift ;;
    esac
done
[[ -n "$outdir" ]] || die "$usage"
# Debian-style version ([epoch:]upstream[-revision]); it also goes into XML and a sed expression.
[[ "$version" =~ ^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*$ ]] || die "bad version: $version"

script="$(readlink -f "${BASH_SOURCE[0]}")"
samples="$(dirname "$(dirname "$script")")/samples/channel"
busybox=/bin/busybox
dnsmasq=/usr/sbin/dnsmasq
nft=/usr/sbin/nft
# Kernel command line the substrate adds (its <cmdline>): kernel messages on the
# serial console cost about a second under TCG; lamina-init's lines still show.
substrate_cmdline="quiet"
# Modules the initramfs needs; modules.dep adds what each depends on.
# crc32c_generic: ext4's checksums (libcrc32c asks the crypto API for crc32c).
# button, evdev: the ACPI power button as /dev/input/event*, which the substrate's
# acpid turns into a clean poweroff (libvirt's graceful shutdown presses that button).
# virtio_net (after failover and net_failover): Lamina's NICs.
modules=(crc32c_generic virtio_pci virtio_blk virtio_net squashfs erofs overlay ext4 button evdev)
# Modules the substrate's root carries for its applications, loaded only by those that ask
# (modprobe): nf_tables, with which dnsserv keeps clients outside allow_from away.
root_modules=(nf_tables)

[[ -d "$samples" ]] || die "$samples not found"
kernel="$(find /boot -maxdepth 1 -name 'vmlinuz-*' -type f -printf '%f\n' | sort -V | tail -n 1)"
[[ -n "$kernel" ]] || die "no /boot/vmlinuz-* found; install linux-image-amd64"
kver="${kernel#vmlinuz-}"
kernel="/boot/${kernel}"
[[ -r "$kernel" ]] || die "cannot read $kernel (run as root: Debian kernels are mode 0600)"
moddir="/lib/modules/${kver}"
[[ -f "${moddir}/modules.dep" ]] || die "${moddir}/modules.dep not found (the modules of ${kernel})"
[[ -x "$busybox" ]] || die "$busybox not found; install busybox-static"
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; install busybox-static"
fi
[[ -x "$dnsmasq" ]] || die "$dnsmasq not found; install dnsmasq-base"
[[ -x "$nft" ]] || die "$nft not found; install nftables"
command -v cpio >/dev/null || die "cpio not found; install cpio"

# The libraries dnsmasq and nft need, as ldd resolves them on this machine, and the loader.
mapfile -t libs < <(ldd "$dnsmasq" "$nft" \
    | awk '/:$/ { next } $2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' \
    | LC_ALL=C sort -u)
((${#libs[@]} > 0)) || die "ldd found no libraries for $dnsmasq and $nft"

mkdir -p "$outdir"
stamp="${outdir}/.sample-channel.stamp"

# Identity of every input, compared as a whole (see build-sample-guest.sh).
inputs="$(
    echo "version ${version}"
    stat -L -c '%n %s %Y' "$kernel" "$busybox" "${moddir}/modules.dep" "$dnsmasq" "$nft" "${libs[@]}"
    sha256sum <"$script"
    (cd "$samples" && find . -type f | LC_ALL=C sort | while read -r f; do
        printf '%s %s %s\n' "$f" "$(stat -c %a "$f")" "$(sha256sum <"$f")"
    done)
)"
if [[ -d "${outdir}/sources" && -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$inputs" ]]; then
    exit 0
fi

log "building the sample channel's sources in ${outdir}/sources (lamina-base ${version}, kernel ${kver})"
# Build in a scratch folder inside OUTDIR, then rename into place, so an
# interrupted build never leaves a half-written channel behind.
work="$(mktemp -d "${outdir}/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
src="${work}/sources"
mkdir -p "$src"

# Busybox and its applet links (absolute, so they resolve in any root).
install_busybox() {
    local root=$1 applet
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin}
    cp "$busybox" "$root/bin/busybox"
    while read -r applet; do
        [[ -e "$root/$applet" || -L "$root/$applet" ]] || ln -s /bin/busybox "$root/$applet"
    done < <("$busybox" --list-full)
}

# Layers record file modes: make them independent of the checkout's umask.
normalize_modes() { chmod -R u+rwX,go=rX "$1"; }

# --- lamina-base: the root layer ---
base="${src}/lamina-base"
rootfs="${base}/rootfs"
mkdir -p "$base"
cp -R "${samples}/lamina-base/rootfs" "$rootfs"
install_busybox "$rootfs"
mkdir -p "$rootfs"/{proc,sys,dev,run,tmp,root,var/lib/lamina,etc/lamina/start.d}
echo "lamina-base ${version}" >"${rootfs}/etc/lamina-release"
# The DHCP script writes the resolver's configuration to the tmpfs: a captured instance
# layer never carries one network's resolver to another instance.
ln -s /run/resolv.conf "${rootfs}/etc/resolv.conf"
mkdir -p "${rootfs}/etc/udhcpc"
ln -s /usr/share/udhcpc/default.script "${rootfs}/etc/udhcpc/default.script"
normalize_modes "$rootfs"
chmod 1777 "${rootfs}/tmp"
chmod 0700 "${rootfs}/root"

# --- lamina-base: the initramfs ---
initramfs="${work}/initramfs"
install_busybox "$initramfs"
mkdir -p "$initramfs"/{proc,sys,dev,newroot,lamina,tmp}
cp "${samples}/initramfs/init" "${initramfs}/init"
chmod 0755 "${initramfs}/init"

# Each wanted module after what it depends on, as modprobe would load them, in $order:
# modules.dep lists a module's dependencies (all of them) with the ones loaded first last.
declare -A loaded=()
order=()
add_module() {
    local path=$1 deps dep i
    [[ -n "${loaded[$path]:-}" ]] && return 0
    deps="$(awk -F': ?' -v m="$path" '$1 == m { print $2; exit }' "${moddir}/modules.dep")"
    read -r -a deps_list <<<"$deps"
    for ((i = ${#deps_list[@]} - 1; i >= 0; i--)); do
        dep="${deps_list[i]}"
        if [[ -z "${loaded[$dep]:-}" ]]; then loaded[$dep]=1; order+=("$dep"); fi
    done
    loaded[$path]=1
    order+=("$path")
}
resolve_modules() {
    local name path
    loaded=()
    order=()
    for name in "$@"; do
        path="$(grep -oE "^[^:]*/${name}\.ko(\.xz|\.zst|\.gz)?:" "${moddir}/modules.dep" | head -n 1 | tr -d :)"
        if [[ -z "$path" ]]; then
            # Built into the kernel, not a module: nothing to load.
            grep -qE "/${name}\.ko\$" "${moddir}/modules.builtin" 2>/dev/null \
                || log "WARNING: module ${name} is neither a module nor built into ${kver}"
            continue
        fi
        add_module "$path"
    done
}
# copy_module PATH DIR: the module at PATH (relative to $moddir) uncompressed into DIR at the
# same relative path, ending in .ko: busybox insmod and modprobe load uncompressed ones only.
copy_module() {
    local path=$1 dest="${2}/${1%.ko*}.ko"
    mkdir -p "$(dirname "$dest")"
    case "$path" in
        *.ko) cp "${moddir}/${path}" "$dest" ;;
        *.ko.xz) xz -dc "${moddir}/${path}" >"$dest" ;;
        *.ko.gz) gzip -dc "${moddir}/${path}" >"$dest" ;;
        *.ko.zst) zstd -qdc "${moddir}/${path}" >"$dest" ;;
    esac
}
resolve_modules "${modules[@]}"
imods="${initramfs}/lib/modules/${kver}"
mkdir -p "$imods"
: >"${imods}/load.order"
for path in "${order[@]}"; do
    copy_module "$path" "$imods"
    echo "${path%.ko*}.ko" >>"${imods}/load.order"
done
log "initramfs modules: $(tr '\n' ' ' <"${imods}/load.order" | sed 's|kernel/[^ ]*/||g')"

# The root's modules, with a modules.dep of their own (paths ending in .ko, as copied) for
# busybox modprobe.
rmods="${rootfs}/lib/modules/${kver}"
mkdir -p "$rmods"
: >"${rmods}/modules.dep"
resolve_modules "${root_modules[@]}"
for path in "${order[@]}"; do
    copy_module "$path" "$rmods"
    awk -F': ?' -v m="$path" '$1 == m {
        line = $1 ":"
        n = split($2, deps, " ")
        for (i = 1; i <= n; i++) line = line " " deps[i]
        gsub(/\.ko\.(xz|gz|zst)/, ".ko", line)
        print line
        exit
    }' "${moddir}/modules.dep" >>"${rmods}/modules.dep"
done
normalize_modes "${rootfs}/lib"
log "root modules (not loaded at boot): $(sed 's|:.*||; s|kernel/[^ ]*/||' "${rmods}/modules.dep" | tr '\n' ' ')"

mkdir -p "${base}/boot"
# newc is the only cpio format the kernel unpacks; files owned by root in the guest;
# times zeroed so the same inputs give the same initrd digest on every rebuild.
find "$initramfs" -exec touch -h -d @0 {} +
(cd "$initramfs" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -6 >"${base}/boot/initrd.img"

# The uncompressed kernel when the bzImage's XZ payload can be extracted (what
# scripts/extract-vmlinux in the kernel tree does; see build-sample-guest.sh).
kernel_file=vmlinuz
offset="$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$kernel" | head -n 1 | cut -d: -f1 || true)"
if [[ -n "$offset" ]] \
    && xz -dcq --single-stream <(tail -c +$((offset + 1)) "$kernel") >"${base}/boot/vmlinux" 2>/dev/null \
    && [[ "$(head -c 4 "${base}/boot/vmlinux" | od -An -tx1 | tr -d ' ')" == "7f454c46" ]]; then
    kernel_file=vmlinux
else
    rm -f "${base}/boot/vmlinux"
    cp "$kernel" "${base}/boot/vmlinuz"
    log "WARNING: could not extract an uncompressed kernel from ${kernel}; publishing vmlinuz"
fi
chmod 0644 "${base}/boot/"*

sed -e "s|@VERSION@|${version}|" -e "s|@KERNEL@|${kernel_file}|" -e "s|@CMDLINE@|${substrate_cmdline}|" \
    "${samples}/lamina-base/appliance.xml.in" >"${base}/appliance.xml"
[[ -n "$substrate_cmdline" ]] || sed -i '/<cmdline><\/cmdline>/d' "${base}/appliance.xml"

# --- webserv ---
cp -R "${samples}/webserv" "${src}/webserv"
normalize_modes "${src}/webserv/layer"

# --- diskprobe, netprobe, mailserv, ticker: busybox scripts only ---
for app in diskprobe netprobe mailserv ticker; do
    cp -R "${samples}/${app}" "${src}/${app}"
    normalize_modes "${src}/${app}/layer"
done

# --- dnsserv: dnsmasq, nft and exactly the libraries ldd lists, at the same paths ---
cp -R "${samples}/dnsserv" "${src}/dnsserv"
layer="${src}/dnsserv/layer"
install -D -m 0755 "$dnsmasq" "${layer}${dnsmasq}"
install -D -m 0755 "$nft" "${layer}${nft}"
for lib in "${libs[@]}"; do
    mkdir -p "${layer}$(dirname "$lib")"
    cp -L "$lib" "${layer}${lib}"
done
normalize_modes "$layer"

chmod 0644 "${src}"/*/appliance.xml
rm -rf "${outdir}/sources.old"
[[ -e "${outdir}/sources" ]] && mv "${outdir}/sources" "${outdir}/sources.old"
mv "$src" "${outdir}/sources"
rm -rf "${outdir}/sources.old"
printf '%s\n' "$inputs" >"$stamp"
log "done: ${outdir}/sources"
