#!/usr/bin/env bash
# Start tgtd (the userspace iSCSI target the volume server exports volumes with) on a machine
# without systemd. Idempotent: does nothing when tgtd already answers `tgtadm`. tgtd ignores
# SIGTERM; to stop it, delete its targets and then the daemon:
#   tgtadm --lld iscsi --mode target --op delete --force --tid N   (each target)
#   tgtadm --mode system --op delete
# and wait until the pid in /run/tgtd.pid is gone (scripts/down.sh does all of this).
# Usage: scripts/start-tgtd.sh   (as root)
set -euo pipefail

WAIT_SECONDS="${LAMINA_TGTD_WAIT:-10}"
LOG=/var/log/lamina-tgtd.log
PIDFILE=/run/tgtd.pid

log() { echo "start-tgtd: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

((EUID == 0)) || die "must run as root"
for tool in tgtd tgtadm; do
    command -v "$tool" >/dev/null || die "$tool not found; run scripts/install-packages.sh"
done

answers() { tgtadm --mode sys --op show >/dev/null 2>&1; }

# Serialise concurrent callers (parallel test runs); tgtd is started with fd 9 closed so it
# does not hold the lock forever.
exec 9>/run/lamina-start-tgtd.lock
flock -w 30 9 || die "timed out waiting for /run/lamina-start-tgtd.lock"

answers && exit 0
log "starting tgtd"
# tgtd allocates each command's data buffer (valloc) and frees it when the command ends; with
# glibc's default threshold a 1 MiB buffer is a fresh mmap, page-faulted and zeroed, then
# munmapped, for every request (a third of tgtd's CPU on large writes). A fixed 32 MiB
# threshold keeps those buffers in the heap for reuse. Fixing it also fixes the trim threshold
# at 128 KiB, so the heap top was given back (brk) after every other command and faulted in
# again: a 32 MiB trim threshold keeps up to 32 MiB of freed buffers (docs/benchmarks.md,
# section 6).
TUNABLES="glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=33554432"
# tgtd daemonises itself (two processes).
# Its pid file lets `make down` wait until it is really gone.
GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}$TUNABLES" tgtd --pid-file "$PIDFILE" \
    >>"$LOG" 2>&1 9>&-
deadline=$((SECONDS + WAIT_SECONDS))
until answers; do
    ((SECONDS < deadline)) || die "tgtd did not answer within ${WAIT_SECONDS}s; see $LOG"
    sleep 0.1
done
