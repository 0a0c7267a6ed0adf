#!/usr/bin/env bash
# `make up`: libvirtd, tgtd, the manager and one local agent (enrolled automatically), then the
# bundled sample guest. `make up HOSTS=N` (N >= 2): N hosts on this machine instead, each a
# network namespace with its own libvirtd and agent (lamina.launcher.nshosts), joined by a
# bridge that stands for the data-centre network (docs/namespace-hosts.md); the data
# directory remembers N (a later make up or make down without HOSTS uses it). Everything
# runs in the background with logs and pid files under the data directory. Running it again
# starts nothing twice, and repairs what an earlier run left broken (daemons that died, a
# sample guest whose start failed). Every wait has a wall-clock deadline and ends, when it
# runs out, with what did not happen and the log to read.
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

# How many hosts: HOSTS (make up HOSTS=N), else what this data directory ran last, else 1.
LAB_DIR=$(cd "$DATA" && pwd)/hosts
HOSTS_FILE=$LAB_DIR/count
RAN=$(cat "$HOSTS_FILE" 2>/dev/null || echo 1)
HOSTS=${HOSTS:-$RAN}
if ! [[ $HOSTS =~ ^[1-9][0-9]?$ ]] || ((HOSTS > 40)); then
  echo "error: HOSTS=$HOSTS: give a number of hosts from 1 to 40" >&2
  exit 2
fi
if ((HOSTS != RAN)) && { ((HOSTS == 1)) || ((HOSTS < RAN)); }; then
  echo "error: $DATA runs $RAN namespace hosts; make up cannot take hosts away (their instances" >&2
  echo "  live there). Use another data directory (LAMINA_DATA_DIR=...) for HOSTS=$HOSTS." >&2
  exit 2
fi
if ((HOSTS > 1)) && [ -f "$DATA/agent/tls/agent.pem" ]; then
  echo "error: $DATA runs one host (\"$HOST_NAME\", this machine's libvirtd); its instances" >&2
  echo "  cannot move to namespace hosts. Use another data directory (LAMINA_DATA_DIR=...)" >&2
  echo "  for HOSTS=$HOSTS, or make down and remove $DATA first." >&2
  exit 2
fi
if ((HOSTS > 1)); then
  # Namespace hosts h1..hN (lamina.launcher.nshosts), their files under $LAB_DIR. The
  # manager listens on the bridge's address in this namespace (the gateway of the
  # data-centre network), which this machine and every host reach, and nothing outside
  # does; with HTTPS from Lamina's own CA, since agents enrol and fetch over that network.
  mkdir -p "$LAB_DIR"
  echo "$HOSTS" >"$HOSTS_FILE"
  export LAMINA_DATA_DIR=$(cd "$DATA" && pwd)  # the same for processes inside the hosts
  LAB_SUBNET=${LAMINA_HOSTS_SUBNET:-10.99.0.0/24}
  NSHOSTS=(.venv/bin/python -m lamina.launcher.nshosts --prefix "${LAMINA_HOSTS_PREFIX:-lamina}"
    --dir "$LAB_DIR" --subnet "$LAB_SUBNET" --persistent)
  HOST_NAMES=()
  for ((i = 1; i <= HOSTS; i++)); do HOST_NAMES+=("h$i"); done
  GATEWAY=$(.venv/bin/python -c "import ipaddress, sys
print(ipaddress.ip_network(sys.argv[1]).network_address + 1)" "$LAB_SUBNET")
  export LAMINA_MANAGER__TLS=${LAMINA_MANAGER__TLS-ca}
  export LAMINA_MANAGER__HOST=${LAMINA_MANAGER__HOST-$GATEWAY}
  export LAMINA_MANAGER__PUBLIC_URL=${LAMINA_MANAGER__PUBLIC_URL-https://$GATEWAY:${LAMINA_MANAGER__PORT:-8775}}
  # Each host's network is its guests' network (their bridges, dnsmasq and taps live in it).
  export LAMINA_AGENT__NETWORK_NAMESPACE=""
  NETNS=""
  AGENT_PORT=${LAMINA_AGENT__PORT:-8776}
fi
# The address of lab host NAME.
lab_address() {
  "${NSHOSTS[@]}" show | .venv/bin/python -c "
import json, sys
print(next(h['address'] for h in json.load(sys.stdin)['hosts'] if h['name'] == '$1'))"
}

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
  if ((HOSTS > 1)); then
    # The hosts (made, or repaired: keepers, libvirtd and virtlogd that died), and h1's
    # own tgtd: h1 is the volume server, its iSCSI portal on its address.
    "${NSHOSTS[@]}" up "${HOST_NAMES[@]}"
    "${NSHOSTS[@]}" tgtd h1 >/dev/null
    return
  fi
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
VERIFY=True
if ((HOSTS > 1)); then
  URL=$LAMINA_MANAGER__PUBLIC_URL
  VERIFY="'$LAMINA_DATA_DIR/ca/ca.pem'"
fi
healthy() { bounded .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$URL/health', verify=$VERIFY).status_code != 200)"; }
# The first administrator, its keys written to ~/.config/lamina/credentials (or
# $LAMINA_CREDENTIALS), which the CLI signs its requests with.
"${LAMINA[@]}" user bootstrap
start_bg manager serve
wait_for 60 "the manager answering $URL/health" "$LOG/manager.log" healthy

# Up, and heard from since SINCE (seconds): a status left from an earlier run does not count.
host_up_since() {  # name since
  bounded "${LAMINA[@]}" --json host show "$1" | .venv/bin/python -c "
import json, sys, datetime
h = json.load(sys.stdin)
beat = h['last_heartbeat'] and datetime.datetime.fromisoformat(h['last_heartbeat']).timestamp()
sys.exit(not (h['status'] == 'up' and beat and beat >= $2 - 1))"
}
# Each lab host: registered (h1 first: the manager keeps new volumes on the oldest host, and
# h1 is the volume server), its agent started inside it (enrolling with a token the first
# time), up; then its libvirtd and QEMU use the migration certificate the agent got at
# enrolment (docs/migration-tls.md).
start_lab_agents() {
  local name address agent_dir token since settings inside
  for name in "${HOST_NAMES[@]}"; do
    address=$(lab_address "$name")
    agent_dir=$LAB_DIR/$name/agent
    token=""
    if ! "${LAMINA[@]}" host show "$name" >/dev/null 2>&1; then
      token=$("${LAMINA[@]}" --json host add "$name" --address "$address:$AGENT_PORT" | json_field "['token']")
    elif [ ! -f "$agent_dir/tls/agent.pem" ]; then
      token=$("${LAMINA[@]}" --json host token "$name" | json_field "['token']")
    fi
    settings=(LAMINA_AGENT__DATA_DIR="$agent_dir" LAMINA_AGENT__HOST="$address"
      LAMINA_AGENT__PORT="$AGENT_PORT" LAMINA_AGENT__LIBVIRT_URI=qemu:///system)
    if [ "$name" = h1 ]; then
      settings+=(LAMINA_AGENT__VOLUMES=true LAMINA_AGENT__ISCSI_PORTAL="$address:3260")
    else
      settings+=(LAMINA_AGENT__VOLUMES=false)
    fi
    since=$(date +%s)
    # nsenter into the host's network and mount namespaces, then the agent (one pid).
    read -ra inside <<<"$("${NSHOSTS[@]}" enter "$name")"
    start_cmd "agent-$name" env "${settings[@]}" "${inside[@]}" \
      "$PWD/.venv/bin/lamina" agent ${token:+--token "$token"}
    wait_for 60 "host $name coming up" "$LOG/agent-$name.log" host_up_since "$name" "$since"
    if "${NSHOSTS[@]}" tls "$name" "$agent_dir/pki" | grep -q "libvirtd restarted"; then
      # The agent's connection to the libvirtd it replaced fails once, then it connects
      # again: a heartbeat from after the restart shows it did, before web needs it.
      since=$(($(date +%s) + 2))
      wait_for 60 "host $name's agent reaching its new libvirtd" "$LOG/agent-$name.log" \
        host_up_since "$name" "$since"
    fi
  done
}
if ((HOSTS > 1)); then
  start_lab_agents
else
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
  wait_for 60 "host $HOST_NAME coming up" "$LOG/agent.log" host_up_since "$HOST_NAME" "$since"
fi

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
forward_bind() {
  bounded "${LAMINA[@]}" --json instance forwards web | .venv/bin/python -c "
import json, sys
print(next((f['bind'] for f in json.load(sys.stdin) if f['guest_port'] == 80), ''))"
}
WEB_BIND=$(forward_bind)
if [ -z "$WEB_BIND" ] && ((HOSTS > 1)); then
  # A floating address of the data-centre network (not a host's own), which moves with web
  # to whichever host runs it (docs/networks.md); a Lamina without floating forwards
  # refuses it, and web's page is published on its host's own address instead.
  WEB_BIND=${LAMINA_SAMPLE_WEB_BIND:-$(.venv/bin/python -c "import ipaddress, sys
print(ipaddress.ip_network(sys.argv[1]).network_address + 100)" "$LAB_SUBNET")}
  if ! within 120 "publishing web's port 80 on $WEB_BIND" "$JOBS_HINT" "${LAMINA[@]}" instance \
      expose web --port 80 --host-port "$WEB_PORT" --bind "$WEB_BIND" >/dev/null 2>&1; then
    WEB_BIND=$(lab_address "$(web_field "['host']")")
    echo "no floating address for web's page: published on its host's address, $WEB_BIND"
    within 120 "publishing web's port 80" "$JOBS_HINT" "${LAMINA[@]}" instance expose web \
      --port 80 --host-port "$WEB_PORT" --bind "$WEB_BIND" >/dev/null
  fi
elif [ -z "$WEB_BIND" ]; then
  within 120 "publishing web's port 80" "$JOBS_HINT" \
    "${LAMINA[@]}" instance expose web --port 80 --host-port "$WEB_PORT" >/dev/null
  WEB_BIND=127.0.0.1
fi
WEB_URL=http://$WEB_BIND:$WEB_PORT/
page_served() { bounded .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$WEB_URL').status_code != 200)"; }
wait_for 60 "the web appliance's page at $WEB_URL" "$LOG/agent.log (its port forwards)" page_served

# Put `lamina` on the PATH, unless something else already answers to that name.
LINK=${LAMINA_CLI_LINK-/usr/local/bin/lamina}
if [ -n "$LINK" ] && { [ ! -e "$LINK" ] || [ "$(readlink "$LINK")" = "$PWD/.venv/bin/lamina" ]; }; then
  ln -sfn "$PWD/.venv/bin/lamina" "$LINK" 2>/dev/null && CLI=lamina || CLI=.venv/bin/lamina
else
  CLI=.venv/bin/lamina
fi

if ((HOSTS > 1)); then
  printf '\nLamina is up: manager %s, %d hosts (%s), the sample web appliance running as "web" on %s.\n' \
    "$URL" "$HOSTS" "${HOST_NAMES[*]}" "$(web_field "['host']")"
else
  printf '\nLamina is up: manager %s, one host, the sample web appliance running as "web".\n' "$URL"
fi
printf '\nThe web appliance: %s\n\n' "$WEB_URL"
hint() { printf '  %-44s # %s\n' "$1" "$2"; }
hint "curl $WEB_URL" "its page, served inside the guest"
hint "$CLI instance show web" "its address on the default network, its name, the forward"
hint "$CLI instance console web" "its console: the page it serves, its site id"
hint "$CLI instance list" "the web appliance, running"
hint "$CLI appliance list" "the sample channel: lamina-base, webserv, dnsserv"
hint "$CLI appliance deploy dnsserv --name dns --var domain=example.org" "a second appliance on the same substrate"
if ((HOSTS > 1)); then
  hint "\$(${NSHOSTS[*]:0:3} --dir $LAB_DIR enter HOST) dig @ADDRESS example.org" "dnsserv answering its network, inside its host"
else
  hint "${NETNS:+ip netns exec $NETNS }dig @ADDRESS example.org" "dnsserv answering its network (ADDRESS: instance show dns)"
fi
hint "$CLI network show default" "the default network and its addresses"
hint "$CLI dns record list --network default" "its DNS zone"
if ((HOSTS > 1)); then
  hint "$CLI host list" "the hosts h1..h$HOSTS, each a network namespace"
  if "${LAMINA[@]}" instance migrate --help >/dev/null 2>&1; then
    hint "$CLI instance migrate web --live" "web to another host (over TLS) while its page answers"
  fi
  hint "\$(${NSHOSTS[*]:0:3} --dir $LAB_DIR enter h1) virsh list" "h1's own libvirtd (inside h1)"
else
  hint "$CLI host list" "the local host and its capacity"
fi
hint "$CLI job list" "what Lamina did, step by step"
hint "make down" "stop what make up started"
