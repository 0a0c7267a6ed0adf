#!/usr/bin/env bash
# `make down`: stops what `make up` started (the sample web appliance, the agent, the manager,
# the sample channel's server, the networks' dnsmasq, the network namespace, and libvirtd and
# tgtd if `make up` was the one that started them). Data stays in the data directory.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${LAMINA_DATA_DIR:-var}
export LAMINA_DATA_DIR=$DATA
RUN=$DATA/run
LAMINA=(.venv/bin/lamina)

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

stop() {
  local name=$1 pid
  if ! running "$name"; then rm -f "$RUN/$name.pid"; return; fi
  pid=$(cat "$RUN/$name.pid")
  kill "$pid"
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$RUN/$name.pid"
  echo "$name stopped"
}

if running manager && running agent; then
  "${LAMINA[@]}" instance stop web --force >/dev/null 2>&1 && echo "web appliance stopped" || true
fi
stop agent
stop manager
stop channel-server
# The agent leaves its networks' dnsmasq running across its own restarts (guests keep their
# DHCP and DNS); make down stops them, then the namespace if make up made it.
AGENT_DIR=$(cd "$DATA" && pwd)/agent
for pid in $(pgrep -f "dnsmasq .*$AGENT_DIR/networks/" || true); do
  kill "$pid" 2>/dev/null || true
done
if [ -f "$RUN/netns.created-by-lamina" ]; then
  netns=$(cat "$RUN/netns.created-by-lamina")
  for signal in TERM KILL; do
    for pid in $(ip netns pids "$netns" 2>/dev/null); do kill -s "$signal" "$pid" 2>/dev/null || true; done
    sleep 0.5
  done
  ip netns delete "$netns" 2>/dev/null || true
  rm -f "$RUN/netns.created-by-lamina"
  echo "network namespace $netns removed"
fi
if [ -f "$RUN/libvirtd.started-by-lamina" ]; then
  for daemon in libvirtd virtlogd; do
    [ -f "/var/run/$daemon.pid" ] && kill "$(cat "/var/run/$daemon.pid")" 2>/dev/null || true
  done
  rm -f "$RUN/libvirtd.started-by-lamina"
  echo "libvirtd stopped"
fi
if [ -f "$RUN/tgtd.started-by-lamina" ]; then
  # tgtd ignores SIGTERM: remove its targets, then ask it to exit.
  for tid in $(tgtadm --lld iscsi --mode target --op show 2>/dev/null \
      | sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
    tgtadm --lld iscsi --mode target --op delete --force --tid "$tid" || true
  done
  tgtadm --mode system --op delete 2>/dev/null || true
  rm -f "$RUN/tgtd.started-by-lamina"
  echo "tgtd stopped"
fi
