# Process and deadline helpers for the scripts that start and stop daemons (up.sh, down.sh,
# start-libvirtd.sh, start-tgtd.sh). Source it; it defines functions only.
#
# Two rules every caller relies on:
# - A zombie is not running. A daemon that exits stays a zombie until its parent reaps it, and
#   the parent of a daemon is the machine's (or the namespace's) init, which may never reap.
#   Its /proc entry, its comm and `pgrep -x` all still answer; only its state says "Z".
# - Every wait has a wall-clock deadline, not a number of attempts: an attempt may itself take
#   seconds. A wait that runs out says what did not happen and where to look.

# Milliseconds of wall-clock time (bash's SECONDS counts whole seconds since the shell began,
# so "SECONDS + 1" may come 0.01 s later).
now_ms() {
    local t=${EPOCHREALTIME//[!0-9]/}
    printf '%s\n' $((10#$t / 1000))
}

# The state letter of process PID (R, S, D, T, Z, X, ...); fails when there is no such process.
proc_state() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # The command name between the parentheses may hold spaces and ")": the state is the first
    # field after the last ") ".
    stat=${stat##*) }
    [[ -n $stat ]] || return 1
    printf '%s\n' "${stat%% *}"
}

# True if PID is a process that still runs: it exists and is neither a zombie nor dead.
pid_alive() {
    local state
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    state=$(proc_state "$1") || return 1
    [[ $state != Z && $state != X && $state != x ]]
}

# Print the pid in PIDFILE if it names a process that still runs (and, given COMM, whose
# command name is COMM: a pid left in a stale file may have been reused by anything since).
pidfile_alive() {
    local file=$1 comm=${2:-} pid
    [[ -r $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    pid_alive "$pid" || return 1
    if [[ -n $comm && "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$comm" ]]; then
        return 1
    fi
    printf '%s\n' "$pid"
}

# True if something accepts connections on the unix socket at PATH (a socket file left by a
# daemon that died refuses them).
socket_answers() {
    [[ -S $1 ]] || return 1
    /usr/bin/python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(2)
s.connect(sys.argv[1])
EOF
}

# Wait until PID no longer runs (gone, or a zombie); fails after SECONDS of wall-clock time.
wait_gone() {
    local pid=$1 deadline=$(($(now_ms) + $2 * 1000))
    while pid_alive "$pid"; do
        (($(now_ms) < deadline)) || return 1
        sleep 0.1
    done
}

# Give an exited process up to SECONDS to be reaped by its parent (its /proc entry gone); a
# parent that never reaps leaves a zombie, which is fine: it no longer runs.
wait_reaped() {
    local pid=$1 deadline=$(($(now_ms) + $2 * 1000))
    while [[ -e /proc/$pid ]] && (($(now_ms) < deadline)); do
        sleep 0.05
    done
}

# Stop process PID (called NAME in messages): SIGTERM, then SIGKILL if it still runs after
# TERM_SECONDS, then wait up to 5 s more. Fails, saying so on stderr, if it still runs. Once
# it has exited, waits up to 2 s for it to be reaped.
stop_pid() {
    local name=$1 pid=$2 term_seconds=${3:-30}
    pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$term_seconds"; then
        echo "$name (pid $pid) still runs ${term_seconds}s after SIGTERM: sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" 5; then
            echo "error: $name (pid $pid) still runs after SIGKILL (state $(proc_state "$pid"))" >&2
            return 1
        fi
    fi
    wait_reaped "$pid" 2
}

# Stop the daemon whose pid is in PIDFILE (if it runs and is called COMM), wait until it is
# gone, then remove PIDFILE and each stale FILE given after it (its sockets).
stop_daemon() {  # comm pidfile term_seconds [file...]
    local comm=$1 pidfile=$2 term_seconds=$3 pid
    shift 3
    if pid=$(pidfile_alive "$pidfile" "$comm"); then
        stop_pid "$comm" "$pid" "$term_seconds" || return 1
    fi
    rm -f "$pidfile" "$@"
}

# wait_for SECONDS WHAT WHERE COMMAND...: run COMMAND (a function too) until it succeeds, for
# at most SECONDS of wall-clock time. While it runs, $WAIT_LEFT holds the seconds left (for
# `bounded`). COMMAND exiting 3 means "this will not happen": stop waiting at once. On failure
# print "error: WHAT did not happen within SECONDS s: <COMMAND's last output>; see WHERE" and
# return 1.
wait_for() {
    local seconds=$1 what=$2 where=$3 out rc WAIT_LEFT
    shift 3
    local deadline=$(($(now_ms) + seconds * 1000))
    while :; do
        WAIT_LEFT=$(((deadline - $(now_ms) + 999) / 1000))
        rc=0
        out=$("$@" 2>&1) || rc=$?
        ((rc == 0)) && return 0
        if ((rc == 3)); then
            echo "error: $what failed: ${out:-no output}; see $where" >&2
            return 1
        fi
        if (($(now_ms) >= deadline)); then
            out=$(tail -n 3 <<<"$out" | tr '\n' ' ')
            echo "error: $what did not happen within ${seconds}s${out:+ (last: $out)}; see $where" >&2
            return 1
        fi
        sleep 0.5
    done
}

# within SECONDS WHAT WHERE COMMAND...: run an external COMMAND that follows a job to its end,
# for at most SECONDS; if it runs out, say so (the command's own errors reach stderr as they
# are) and return 1.
within() {
    local seconds=$1 what=$2 where=$3 rc=0
    shift 3
    timeout "$seconds" "$@" || rc=$?
    if ((rc == 124)); then
        echo "error: $what did not finish within ${seconds}s; see $where" >&2
    fi
    return "$rc"
}

# bounded COMMAND...: run an external COMMAND for at most min(20 s, the wait's time left), so
# one slow attempt cannot carry a wait far past its deadline.
bounded() {
    local limit=${WAIT_LEFT:-20}
    ((limit > 20)) && limit=20
    ((limit < 1)) && limit=1
    timeout "$limit" "$@"
}
