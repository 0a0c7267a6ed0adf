#!/usr/bin/env bash
# Start virtlogd and libvirtd on a machine without systemd, configured so QEMU
# guests run as root without a security driver or cgroups (what works in the
# project's containers). Idempotent: does nothing when libvirtd already answers.
# libvirtd is shared by everything on the machine, so there is no stop script.
# Usage: scripts/start-libvirtd.sh   (as root)
set -euo pipefail

QEMU_CONF=/etc/libvirt/qemu.conf
URI=qemu:///system
# First start on a fresh machine probes QEMU capabilities (~8 s here under TCG).
WAIT_SECONDS="${LAMINA_LIBVIRTD_WAIT:-15}"

LIBVIRTD_LOG=/var/log/libvirt/libvirtd.log

log() { echo "start-libvirtd: $*" >&2; }
# On failure also show libvirtd's own last errors: the cause is usually there
# (e.g. "configuration file syntax error: /etc/libvirt/qemu.conf:6").
die() {
    log "ERROR: $*"
    if [[ -r "$LIBVIRTD_LOG" ]]; then
        grep ' error : ' "$LIBVIRTD_LOG" | tail -n 3 | sed 's/^/    /' >&2 || true
    fi
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

# True if the pid file names a live process whose command is $1.
# Falls back to a process-name lookup so a daemon started without our pid
# file is not started a second time.
daemon_running() {
    local name=$1 pidfile="/run/$1.pid" pid
    if [[ -r "$pidfile" ]]; then
        pid="$(tr -dc '0-9' <"$pidfile")"
        if [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]; then
            return 0
        fi
    fi
    pgrep -x "$name" >/dev/null
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

# virtlogd collects guest console/log output; libvirtd needs it for QEMU guests.
if ! daemon_running virtlogd; then
    log "starting virtlogd"
    virtlogd -d 9>&-
fi

if daemon_running libvirtd; then
    if ((config_changed)); then
        log "WARNING: libvirtd was already running; restart it to apply ${QEMU_CONF} changes"
    fi
fi

# libvirtd daemonises before its socket is ready: wait until it really answers.
# (Re)start it inside the loop so a libvirtd that was still shutting down when
# we looked is replaced once it has gone.
deadline=$((SECONDS + WAIT_SECONDS))
starts=0
until virsh -c "$URI" version >/dev/null 2>&1; do
    if ! daemon_running libvirtd; then
        ((starts < 2)) || die "libvirtd exits right after start; last errors from ${LIBVIRTD_LOG}:"
        log "starting libvirtd"
        libvirtd -d 9>&-
        starts=$((starts + 1))
    fi
    if ((SECONDS >= deadline)); then
        err="$(virsh -c "$URI" version 2>&1 >/dev/null | tr '\n' ' ' || true)"
        die "libvirtd did not answer on ${URI} within ${WAIT_SECONDS}s: ${err:-no error text}; last errors from ${LIBVIRTD_LOG}:"
    fi
    sleep 0.2
done
