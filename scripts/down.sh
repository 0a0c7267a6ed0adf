#!/usr/bin/env bash
# `make down`: stops what `make up` started (the sample web appliance, the agent, the manager,
# the sample channel's server, the networks' dnsmasq, the network namespace, and libvirtd and
# tgtd if `make up` was the one that started them). After `make up HOSTS=N`: every instance
# is stopped, then the hosts' agents, and the hosts themselves are removed (every process in
# their namespaces: libvirtd, virtlogd, tgtd, dnsmasq, guests; the namespaces and the bridge). Data stays in the data directory.
# Each process is waited for until it is gone (a zombie counts as gone), SIGKILLed after a
# deadline, and its pid file and stale sockets removed, so a `make up` right after finds nothing
# half-stopped. Exits non-zero if something could not be stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/daemons.sh
source scripts/lib/daemons.sh

DATA=${LAMINA_DATA_DIR:-var}
export LAMINA_DATA_DIR=$DATA
RUN=$DATA/run
LAMINA=(.venv/bin/lamina)

failed=0
LAB_DIR=$(cd "$DATA" 2>/dev/null && pwd || echo "$DATA")/hosts
HOSTS=$(cat "$LAB_DIR/count" 2>/dev/null || echo 1)
# What make up started itself: stopped by the pid it wrote, and waited for.
stop() {  # name
  local name=$1 pid
  if pid=$(pidfile_alive "$RUN/$name.pid"); then
    stop_pid "$name" "$pid" 10 || { failed=1; return; }
    echo "$name stopped"
  fi
  rm -f "$RUN/$name.pid"
}

if pidfile_alive "$RUN/manager.pid" >/dev/null && pidfile_alive "$RUN/agent.pid" >/dev/null; then
  # Powered off (the next make up boots it again); bounded, as everything here.
  if timeout 120 "${LAMINA[@]}" instance stop web --force >/dev/null 2>&1; then
    echo "web appliance stopped"
  fi
fi
if ((HOSTS > 1)) && pidfile_alive "$RUN/manager.pid" >/dev/null; then
  # The hosts go, and every guest with them: each running instance is powered off first, so
  # the manager records it stopped (the next make up starts web again).
  for name in $(timeout 30 "${LAMINA[@]}" --json instance list 2>/dev/null | .venv/bin/python -c "
import json, sys
print(' '.join(i['name'] for i in json.load(sys.stdin) if i['status'] in ('running', 'paused')))" \
      2>/dev/null); do
    timeout 120 "${LAMINA[@]}" instance stop "$name" --force >/dev/null 2>&1 \
      && echo "instance $name stopped"
  done
fi
stop agent
for pidfile in "$RUN"/agent-*.pid; do
  [ -e "$pidfile" ] || continue
  name=$(basename "$pidfile" .pid)
  stop "$name"
done
stop manager
stop channel-server
# The agent leaves its networks' dnsmasq running across its own restarts (guests keep their
# DHCP and DNS); make down stops them, then the namespace if make up made it.
AGENT_DIR=$(cd "$DATA" && pwd)/agent
for pid in $(pgrep -f "dnsmasq .*$AGENT_DIR/networks/" || true); do
  stop_pid dnsmasq "$pid" 5 || failed=1
done
if [ -f "$RUN/netns.created-by-lamina" ]; then
  netns=$(cat "$RUN/netns.created-by-lamina")
  for pid in $(ip netns pids "$netns" 2>/dev/null); do
    stop_pid "process $(cat "/proc/$pid/comm" 2>/dev/null) in $netns" "$pid" 5 || failed=1
  done
  ip netns delete "$netns" 2>/dev/null || true
  rm -f "$RUN/netns.created-by-lamina"
  echo "network namespace $netns removed"
fi
if [ -f "$LAB_DIR/lab.json" ]; then
  # Every process in each host (libvirtd, virtlogd, tgtd, dnsmasq, guests), then the
  # namespaces and the bridge; what the hosts keep (agents' files, guests' definitions)
  # stays under $LAB_DIR for the next make up.
  if timeout 300 .venv/bin/python -m lamina.launcher.nshosts \
      --prefix "${LAMINA_HOSTS_PREFIX:-lamina}" --dir "$LAB_DIR" down; then
    echo "hosts removed (namespaces, their daemons and guests, the bridge)"
  else
    failed=1
  fi
fi
if [ -f "$RUN/libvirtd.started-by-lamina" ]; then
  # libvirtd first (it holds virtlogd's socket open for its guests), each until gone; their
  # sockets are removed only then, so a socket file always means a daemon.
  if stop_daemon libvirtd /run/libvirtd.pid 30 \
      /run/libvirt/libvirt-sock /run/libvirt/libvirt-sock-ro /run/libvirt/libvirt-admin-sock \
    && stop_daemon virtlogd /run/virtlogd.pid 10 \
      /run/libvirt/virtlogd-sock /run/libvirt/virtlogd-admin-sock; then
    rm -f "$RUN/libvirtd.started-by-lamina"
    echo "libvirtd and virtlogd stopped"
  else
    failed=1
  fi
fi
if [ -f "$RUN/tgtd.started-by-lamina" ]; then
  # tgtd ignores SIGTERM: remove its targets, then ask it to exit, then wait until it has.
  for tid in $(timeout 10 tgtadm --lld iscsi --mode target --op show 2>/dev/null \
      | sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
    timeout 10 tgtadm --lld iscsi --mode target --op delete --force --tid "$tid" || true
  done
  timeout 10 tgtadm --mode system --op delete 2>/dev/null || true
  stopped=1
  if pid=$(pidfile_alive /run/tgtd.pid tgtd); then
    if ! wait_gone "$pid" 10; then
      echo "tgtd (pid $pid) still runs 10s after it was asked to exit: sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 5 || { echo "error: tgtd (pid $pid) survives SIGKILL" >&2; stopped=0; }
    fi
  fi
  if ((stopped)); then
    rm -f /run/tgtd.pid /run/tgtd/socket.0
    rm -f "$RUN/tgtd.started-by-lamina"
    echo "tgtd stopped"
  else
    failed=1
  fi
fi
if ((failed)); then
  echo "error: make down could not stop everything (see above); run it again" >&2
  exit 1
fi
