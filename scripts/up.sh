#!/usr/bin/env bash
# `make up`: libvirtd, tgtd, the manager and one local agent (enrolled automatically), then the
# bundled sample guest. Everything runs in the background with logs and pid files under the
# data directory. Running it again starts nothing twice, and repairs what an earlier run left
# broken (daemons that died, a sample guest whose start failed). Every wait has a wall-clock
# deadline and ends, when it runs out, with what did not happen and the log to read.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/daemons.sh
source scripts/lib/daemons.sh

DATA=${LAMINA_DATA_DIR:-var}
export LAMINA_DATA_DIR=$DATA
LAMINA=(.venv/bin/lamina)
RUN=$DATA/run
LOG=$DATA/log
HOST_NAME=local
AGENT_ADDRESS=${LAMINA_AGENT__HOST:-127.0.0.1}:${LAMINA_AGENT__PORT:-8776}
mkdir -p "$RUN" "$LOG"
CHANNEL=$(cd "$DATA" && pwd)/sample-channel
CHANNEL_PORT=${LAMINA_SAMPLE_CHANNEL_PORT:-8777}
CHANNEL_URL=http://127.0.0.1:$CHANNEL_PORT/channel.rss
# The manager fetches channels only from public addresses unless told otherwise; the sample
# channel is served on loopback, so this one machine allows it (channels.allow_private,
# docs/configuration.md). Image locations and boot URLs stay public-only.
export LAMINA_CHANNELS__ALLOW_PRIVATE=${LAMINA_CHANNELS__ALLOW_PRIVATE-true}
# Guests' bridges, dnsmasq, taps and the configuration service live in a network namespace
# of their own, so the quick start touches none of this machine's own networking and guests
# reach nothing but what is inside it (set it to "" to use the host's network, as on a real
# server: docs/networks.md). `make down` removes it if `make up` made it.
export LAMINA_AGENT__NETWORK_NAMESPACE=${LAMINA_AGENT__NETWORK_NAMESPACE-lamina}
NETNS=$LAMINA_AGENT__NETWORK_NAMESPACE
NETWORK_CIDR=${LAMINA_SAMPLE_NETWORK_CIDR:-10.77.0.0/24}
WEB_PORT=${LAMINA_SAMPLE_WEB_PORT:-8780}

# Started by this script and still running: a zombie left by an earlier run is not.
running() { pidfile_alive "$RUN/$1.pid" >/dev/null; }

start_cmd() {  # name, command...
  local name=$1; shift
  if running "$name"; then
    echo "$name already running (pid $(cat "$RUN/$name.pid"))"
    return
  fi
  nohup "$@" >>"$LOG/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  echo "$name started (pid $!, log $LOG/$name.log)"
}

start_bg() {  # name, args...
  local name=$1; shift
  if running "$name"; then
    echo "$name already running (pid $(cat "$RUN/$name.pid"))"
    return
  fi
  nohup "${LAMINA[@]}" "$@" >>"$LOG/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  echo "$name started (pid $!, log $LOG/$name.log)"
}

json_field() { .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)$1)"; }

# libvirtd with its virtlogd (without which every guest start fails), and tgtd, the iSCSI
# target the agent (a volume server) exports volumes with. Each counts as up when it answers
# on its socket, never because a process of its name exists: `make down` may have left it a
# zombie. Those this script starts, `make down` stops.
ensure_daemons() {
  local libvirtd_up=0
  timeout 10 virsh -c qemu:///system version >/dev/null 2>&1 && libvirtd_up=1
  if ((!libvirtd_up)) || ! socket_answers /run/libvirt/virtlogd-sock; then
    bash scripts/start-libvirtd.sh
    ((libvirtd_up)) || touch "$RUN/libvirtd.started-by-lamina"
  fi
  if ! timeout 10 tgtadm --mode sys --op show >/dev/null 2>&1; then
    bash scripts/start-tgtd.sh
    touch "$RUN/tgtd.started-by-lamina"
  fi
}
ensure_daemons
if [ -n "$NETNS" ] && ! ip netns list | awk '{print $1}' | grep -qx "$NETNS"; then
  ip netns add "$NETNS"
  echo "$NETNS" >"$RUN/netns.created-by-lamina"
fi
bash scripts/build-sample-channel.sh "$CHANNEL"

URL=$("${LAMINA[@]}" --json config show | json_field "['client']['manager_url']")
healthy() { bounded .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$URL/health').status_code != 200)"; }
# The first administrator, its keys written to ~/.config/lamina/credentials (or
# $LAMINA_CREDENTIALS), which the CLI signs its requests with.
"${LAMINA[@]}" user bootstrap
start_bg manager serve
wait_for 60 "the manager answering $URL/health" "$LOG/manager.log" healthy

if ! "${LAMINA[@]}" host show "$HOST_NAME" >/dev/null 2>&1; then
  token=$("${LAMINA[@]}" --json host add "$HOST_NAME" --address "$AGENT_ADDRESS" | json_field "['token']")
elif [ ! -f "$DATA/agent/tls/agent.pem" ]; then
  token=$("${LAMINA[@]}" --json host token "$HOST_NAME" | json_field "['token']")
fi
since=$(date +%s)
if running agent; then
  echo "agent already running (pid $(cat "$RUN/agent.pid"))"
else
  start_bg agent agent ${token:+--token "$token"}
fi
# Up, and heard from since now: a status left from an earlier run does not count.
host_up() {
  bounded "${LAMINA[@]}" --json host show "$HOST_NAME" | .venv/bin/python -c "
import json, sys, datetime
h = json.load(sys.stdin)
beat = h['last_heartbeat'] and datetime.datetime.fromisoformat(h['last_heartbeat']).timestamp()
sys.exit(not (h['status'] == 'up' and beat and beat >= $since - 1))"
}
wait_for 60 "host $HOST_NAME coming up" "$LOG/agent.log" host_up

# The bundled sample channel (one substrate, two applications, built from this machine's
# Debian packages), signed with a key of this data directory and served on loopback.
"${LAMINA[@]}" channel keygen "$CHANNEL/channel.key" >/dev/null 2>&1 || true
"${LAMINA[@]}" channel build "$CHANNEL/sources" --out "$CHANNEL/public" \
  --key "$CHANNEL/channel.key" --title "Lamina samples" >/dev/null
start_cmd channel-server .venv/bin/python -m http.server --bind 127.0.0.1 \
  --directory "$CHANNEL/public" "$CHANNEL_PORT"
channel_served() { bounded .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$CHANNEL_URL').status_code != 200)"; }
wait_for 30 "the sample channel served at $CHANNEL_URL" "$LOG/channel-server.log" channel_served
if ! "${LAMINA[@]}" --json channel list | grep -q "\"$CHANNEL_URL\""; then
  "${LAMINA[@]}" channel add "$CHANNEL_URL" --key "$(cat "$CHANNEL/public/channel.pub")" >/dev/null
else
  # Subscribed by an earlier make up: the feed was just rebuilt from this tree's samples,
  # which may be newer than what the manager last read.
  "${LAMINA[@]}" channel refresh "$CHANNEL_URL" >/dev/null
fi

# The default network every instance joins unless told otherwise: public, so every user of
# this cloud may put instances on it.
if ! "${LAMINA[@]}" network show default >/dev/null 2>&1; then
  "${LAMINA[@]}" network create default --cidr "$NETWORK_CIDR" --public \
    --description "the network instances join by default" >/dev/null
fi

# The sample web appliance (and the substrate it builds on), deployed as instance "web".
installed() {
  "${LAMINA[@]}" --json appliance list --installed | .venv/bin/python -c "
import json, sys
sys.exit(not any(a['name'] == 'webserv' and a['status'] == 'installed' for a in json.load(sys.stdin)))"
}
JOBS_HINT=".venv/bin/lamina job list; $LOG/manager.log; $LOG/agent.log"
installed || within 600 "installing webserv" "$JOBS_HINT" \
  "${LAMINA[@]}" appliance install webserv >/dev/null
CLI_PATH=.venv/bin/lamina
web_field() { bounded "${LAMINA[@]}" --json instance show web | json_field "$1"; }
# "absent" only when the manager says there is no "web": a failed call is not an absence.
web_status() {
  bounded "${LAMINA[@]}" --json instance list | .venv/bin/python -c "
import json, sys
print(next((i['status'] for i in json.load(sys.stdin) if i['name'] == 'web'), 'absent'))"
}
deploy_web() {
  "${LAMINA[@]}" --json appliance deploy webserv --name web --var domain=web.lamina.test \
    --no-wait | json_field "['job']['id']"
}
start_web() { "${LAMINA[@]}" --json instance start web --no-wait | json_field "['id']"; }
# Follow a job to its end (within SECONDS); if it did not succeed, say so at once with its
# error and where to read more.
follow_job() {  # job seconds what
  local job=$1 seconds=$2 what=$3 out error
  out=$(timeout $((seconds + 30)) "${LAMINA[@]}" --json job show "$job" --wait \
    --timeout "$seconds" 2>&1) && return 0
  error=$(json_field "['error'] or ''" <<<"$out" 2>/dev/null) || error=$(tail -n 1 <<<"$out")
  echo "error: $what failed: ${error:-no error recorded}" >&2
  echo "  see: $CLI_PATH job show $job; $LOG/agent.log; /var/log/libvirt/qemu/" >&2
  return 1
}
# A web appliance an older make up deployed before instances had networks is made again.
if [ "$(web_status)" != absent ] && [ "$(web_field "['networks']")" = "[]" ]; then
  within 120 "deleting web" "$JOBS_HINT" "${LAMINA[@]}" instance delete web --yes >/dev/null
fi
# Deploy or start "web" and follow its job. A start that failed (in this run, or in an earlier
# one: then the instance is in error, or stopped with an error) is reported at once, and tried
# once more after making sure the daemons answer: the usual cause is a daemon that was down,
# which this run has just started. A second failure ends make up.
for attempt in 1 2; do
  status=$(web_status)
  if { [ "$status" = stopped ] || [ "$status" = error ]; } && [ "$attempt" = 1 ]; then
    last_error=$(web_field "['error'] or ''" 2>/dev/null || true)
    if [ -n "$last_error" ]; then
      echo "the web appliance's last start failed: $last_error; starting it again"
    fi
  fi
  case "$status" in
    absent) job=$(deploy_web) what="deploying the web appliance" seconds=300 ;;
    stopped) job=$(start_web) what="starting the web appliance" seconds=120 ;;
    error)
      if [ "$attempt" = 1 ]; then
        job=$(start_web) what="starting the web appliance" seconds=120
      else
        # Started once and failed again: make it anew.
        within 120 "deleting web" "$JOBS_HINT" "${LAMINA[@]}" instance delete web --yes >/dev/null
        job=$(deploy_web) what="deploying the web appliance again" seconds=300
      fi ;;
    *) job="" ;;  # running, or being built, paused, ... by something else: waited for below
  esac
  if [ -z "$job" ] || follow_job "$job" "$seconds" "$what"; then
    break
  fi
  if [ "$attempt" = 2 ]; then
    exit 1
  fi
  echo "retrying once, after making sure libvirtd, virtlogd and tgtd answer"
  ensure_daemons
done
# Booted: the substrate prints its ready line. A guest that stops or fails on the way ends the
# wait at once.
console_ready() {
  bounded "${LAMINA[@]}" instance console web | grep -q "lamina-base: ready" && return 0
  local failed
  failed=$(bounded "${LAMINA[@]}" --json instance show web | .venv/bin/python -c "
import json, sys
d = json.load(sys.stdin)
if d['status'] in ('stopped', 'error'):
    print(f\"web is {d['status']}: {d['error'] or 'no error recorded'}\")") || return 1
  [ -n "$failed" ] || return 1
  echo "$failed"
  return 3
}
wait_for 180 "the web appliance's ready line on its console" \
  "$CLI_PATH instance console web; $LOG/agent.log" console_ready
# Its page, published on this machine's loopback.
if ! "${LAMINA[@]}" --json instance forwards web | grep -q '"guest_port": 80,'; then
  within 120 "publishing web's port 80" "$JOBS_HINT" \
    "${LAMINA[@]}" instance expose web --port 80 --host-port "$WEB_PORT" >/dev/null
fi
WEB_URL=http://127.0.0.1:$WEB_PORT/
page_served() { bounded .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$WEB_URL').status_code != 200)"; }
wait_for 60 "the web appliance's page at $WEB_URL" "$LOG/agent.log (its port forwards)" page_served

# Put `lamina` on the PATH, unless something else already answers to that name.
LINK=${LAMINA_CLI_LINK-/usr/local/bin/lamina}
if [ -n "$LINK" ] && { [ ! -e "$LINK" ] || [ "$(readlink "$LINK")" = "$PWD/.venv/bin/lamina" ]; }; then
  ln -sfn "$PWD/.venv/bin/lamina" "$LINK" 2>/dev/null && CLI=lamina || CLI=.venv/bin/lamina
else
  CLI=.venv/bin/lamina
fi

printf '\nLamina is up: manager %s, one host, the sample web appliance running as "web".\n' "$URL"
printf '\nThe web appliance: %s\n\n' "$WEB_URL"
hint() { printf '  %-44s # %s\n' "$1" "$2"; }
hint "curl $WEB_URL" "its page, served inside the guest"
hint "$CLI instance show web" "its address on the default network, its name, the forward"
hint "$CLI instance console web" "its console: the page it serves, its site id"
hint "$CLI instance list" "the web appliance, running"
hint "$CLI appliance list" "the sample channel: lamina-base, webserv, dnsserv"
hint "$CLI appliance deploy dnsserv --name dns --var domain=example.org" "a second appliance on the same substrate"
hint "${NETNS:+ip netns exec $NETNS }dig @ADDRESS example.org" "dnsserv answering its network (ADDRESS: instance show dns)"
hint "$CLI network show default" "the default network and its addresses"
hint "$CLI dns record list --network default" "its DNS zone"
hint "$CLI host list" "the local host and its capacity"
hint "$CLI job list" "what Lamina did, step by step"
hint "make down" "stop what make up started"
