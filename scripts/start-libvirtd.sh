#!/usr/bin/env bash
# Start virtlogd and libvirtd on a machine without systemd, configured so QEMU
# guests run as root without a security driver or cgroups (what works in the
# project's containers). Idempotent: does nothing when virtlogd and libvirtd already answer.
# libvirtd is shared by everything on the machine, so there is no stop script (`make down`
# stops the two only when `make up` started them).
# Usage: scripts/start-libvirtd.sh   (as root)
set -euo pipefail

QEMU_CONF=/etc/libvirt/qemu.conf
URI=qemu:///system
# First start on a fresh machine probes QEMU capabilities (~8 s here under TCG).
WAIT_SECONDS="${LAMINA_LIBVIRTD_WAIT:-15}"

VIRTLOGD_SOCK=/run/libvirt/virtlogd-sock
# shellcheck source=lib/daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemons.sh"

log() { echo "start-libvirtd: $*" >&2; }
# On failure also show the daemons' own last errors: the cause is usually there
# (e.g. "configuration file syntax error: /etc/libvirt/qemu.conf:6").
die() {
    log "ERROR: $*"
    local file
    for file in /var/log/libvirt/libvirtd.log /var/log/libvirt/virtlogd.log; do
        if [[ -r "$file" ]]; then
            grep ' error : ' "$file" | tail -n 3 | sed "s|^|    ${file##*/}: |" >&2 || true
        fi
    done
    exit 1
}

((EUID == 0)) || die "must run as root"
for tool in libvirtd virtlogd virsh; do
    command -v "$tool" >/dev/null || die "$tool not found; run scripts/install-packages.sh"
done

# Serialise concurrent callers (e.g. parallel test runs) so only one starts the
# daemons. The daemons are started with fd 9 closed, else they would inherit
# the lock and hold it forever.
exec 9>/run/lamina-start-libvirtd.lock
flock -w 60 9 || die "timed out waiting for /run/lamina-start-libvirtd.lock"

# A daemon runs when its socket answers: not when a process of its name exists. A daemon
# stopped a moment ago lingers as a zombie (its parent, init, may never reap it) with its name
# and pid still in /proc, so `pgrep -x` and a pid file's comm both call it running, and then
# nothing starts it again (issue 12, item 13).
virtlogd_answers() { socket_answers "$VIRTLOGD_SOCK"; }
libvirtd_answers() { virsh -c "$URI" version >/dev/null 2>&1; }

# ensure_daemon NAME ANSWERS START...: leave a daemon that answers alone; wait for one that
# runs (not a zombie) but does not answer yet, since it is starting or still stopping; start
# it (at most twice) whenever none runs; fail if it does not answer within WAIT_SECONDS.
ensure_daemon() {
    local name=$1 answers=$2 pid
    shift 2
    local deadline=$((SECONDS + WAIT_SECONDS)) starts=0
    until "$answers"; do
        if ((SECONDS >= deadline)); then
            if pid=$(pidfile_alive "/run/$name.pid" "$name"); then
                die "$name (pid $pid) runs but did not answer within ${WAIT_SECONDS}s; last errors from /var/log/libvirt/$name.log:"
            fi
            die "$name did not answer within ${WAIT_SECONDS}s; last errors from /var/log/libvirt/$name.log:"
        fi
        if ! pidfile_alive "/run/$name.pid" "$name" >/dev/null; then
            ((starts < 2)) || die "$name exits right after start; last errors from /var/log/libvirt/$name.log:"
            log "starting $name"
            "$@" 9>&-
            starts=$((starts + 1))
        fi
        sleep 0.2
    done
}

# Make key = value hold in qemu.conf: leave a correct line alone, rewrite a
# differing active line, append when absent. Never duplicates on re-runs.
# Multi-line values are not expected for these keys (defaults are commented out).
config_changed=0
set_conf() {
    local key=$1 value=$2
    if grep -Eq "^[[:space:]]*${key}[[:space:]]*=" "$QEMU_CONF"; then
        # Compare ignoring whitespace so 'cgroup_controllers = [ ]' == '[]'.
        local current
        current="$(grep -E "^[[:space:]]*${key}[[:space:]]*=" "$QEMU_CONF" | tail -n1 \
            | sed -E "s/^[[:space:]]*${key}[[:space:]]*=//" | tr -d '[:space:]')"
        if [[ "$current" != "$(tr -d '[:space:]' <<<"$value")" ]]; then
            log "qemu.conf: changing ${key} to ${value}"
            sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*|${key} = ${value}|" "$QEMU_CONF"
            config_changed=1
        fi
    else
        # Keep a last line without newline from being glued to ours.
        if [[ -s "$QEMU_CONF" && -n "$(tail -c1 "$QEMU_CONF")" ]]; then
            echo >>"$QEMU_CONF"
        fi
        printf '%s = %s\n' "$key" "$value" >>"$QEMU_CONF"
        config_changed=1
    fi
}

# libvirtd refuses to start without the user/groups its QEMU driver was built for,
# even though we run guests as root (no libvirt-daemon-system to create them).
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null \
    || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

mkdir -p /var/log/libvirt /var/run/libvirt /etc/libvirt

# qemu.conf ships with libvirt-daemon-system (not installed: it needs systemd),
# so it may be missing altogether.
if [[ ! -e "$QEMU_CONF" ]]; then
    echo "# Written by Lamina scripts/start-libvirtd.sh" >"$QEMU_CONF"
fi
# No DAC/SELinux/AppArmor and no cgroups: neither works inside these containers.
set_conf user '"root"'
set_conf group '"root"'
set_conf security_driver '"none"'
set_conf cgroup_controllers '[ ]'

# virtlogd collects guest console/log output; libvirtd needs it for QEMU guests (without it,
# every start fails: "Failed to connect socket to '/run/libvirt/virtlogd-sock'").
ensure_daemon virtlogd virtlogd_answers virtlogd -d

if libvirtd_answers && ((config_changed)); then
    log "WARNING: libvirtd was already running; restart it to apply ${QEMU_CONF} changes"
fi
# libvirtd daemonises before its socket is ready: ensure_daemon waits until it really answers.
ensure_daemon libvirtd libvirtd_answers libvirtd -d
