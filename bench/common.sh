# shellcheck shell=bash
# Helpers shared by bench/dataplane.sh and bench/dns.sh, sourced by both right after their
# settings (source "$SCRIPT_DIR/common.sh"). Only what the two scripts do the same way lives
# here. Where they differ, each script keeps its own version: wait_http (dataplane.sh sends the
# Host of the variant under test), the CPU of the processes measured (single PIDs from
# /proc/PID/stat there, whole process trees with reaped children in dns.sh), how busy the
# machine was before the start (/proc/stat there, per-process snapshots in dns.sh), ratio (3
# decimals there, 2 in dns.sh), and what happens without a strait binary (dataplane.sh skips
# its strait variants, dns.sh stops).
#
# The sourcing script sets, before sourcing: ONLY (" name name ", for want), and before calling
# the functions that use them: MAX_SECONDS (start_watchdog), CLK_TCK (children_ticks), ROOT
# (describe_checkout) and T, its temporary folder (start, children_ticks, cleanup).

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
want() { [[ $ONLY == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Processes the script starts, and their cleanup.
PIDS=()
WATCHDOG=""
T=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $WATCHDOG ]]; then
        kill "$WATCHDOG" 2>/dev/null || true
    fi
    stop_pids "${PIDS[@]+"${PIDS[@]}"}"
    if [[ -n $T && -d $T ]]; then
        if [[ ${BENCH_KEEP:-0} == 1 ]]; then
            log "kept $T"
        else
            rm -rf "$T"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# stop_pids PID...: SIGTERM, up to 5 s of grace, then SIGKILL. Only PIDs this script started
# (NSD's server processes exit with their parent).
stop_pids() {
    local p alive
    [[ $# == 0 ]] && return 0
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

# start NAME CMD...: runs CMD in the background, output in $T/logs/NAME.log; sets LAST_PID.
LAST_PID=""
start() {
    local name=$1
    shift
    "$@" >"$T/logs/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# start_watchdog: from here on the run is bounded in time: after MAX_SECONDS the script gets a
# SIGTERM (and its cleanup stops what it started). Sets WATCHDOG, which the cleanup stops.
start_watchdog() {
    (
        end=$((SECONDS + MAX_SECONDS))
        while ((SECONDS < end)); do
            sleep 1
            kill -0 $$ 2>/dev/null || exit 0
        done
        echo "[bench] time limit of ${MAX_SECONDS}s reached, stopping" >&2
        kill -TERM $$
    ) &
    WATCHDOG=$!
}

# ---------------------------------------------------------------------------------------------
# Tools: install what is missing.
APT_UPDATED=0
apt_install() {
    [[ ${BENCH_NO_INSTALL:-0} == 1 ]] && return 1
    command -v apt-get >/dev/null || return 1
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || return 1
        sudo=(sudo -n)
    fi
    if [[ $APT_UPDATED == 0 ]]; then
        log "apt-get update"
        "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || true
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null 2>&1
}

# need CMD PACKAGE...: true when CMD is there or one of the packages installs it. It looks on
# PATH as the script has it (dns.sh adds sbin for its daemons first; dataplane.sh does not).
need() {
    local cmd=$1 pkg
    shift
    command -v "$cmd" >/dev/null && return 0
    for pkg in "$@"; do
        apt_install "$pkg" || true
        hash -r
        command -v "$cmd" >/dev/null && return 0
    done
    log "cannot install $cmd (tried apt packages: $*)"
    return 1
}

# ---------------------------------------------------------------------------------------------
# Loopback ports: free TCP and UDP ports below the ephemeral range. The script calls
# refresh_used_ports once it is ready to take ports, then port for each.
USED_PORTS=" "
refresh_used_ports() {
    local hex
    USED_PORTS=" "
    while read -r hex; do USED_PORTS+="$((16#$hex)) "; done < <(
        cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null |
            awk '$2 ~ /:/ { n = split($2, a, ":"); print a[n] }')
}
NEXT_PORT=${BENCH_PORT_BASE:-$((20000 + RANDOM % 9000))}
# port: sets PORT to the next free one.
port() {
    while [[ $USED_PORTS == *" $NEXT_PORT "* ]]; do NEXT_PORT=$((NEXT_PORT + 1)); done
    # shellcheck disable=SC2034 # read by the sourcing script
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}

# render TEMPLATE OUT KEY=VALUE...
render() {
    local tpl=$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
}

# ---------------------------------------------------------------------------------------------
# /proc readings.
CHILD_TICKS=0
children_ticks() { # sets CHILD_TICKS: CPU of this shell's finished children (wrk, h2load, dnsperf), in ticks
    times >"$T/times.txt" # not in a pipe or $(...): a subshell would report its own children
    # shellcheck disable=SC2034 # read by the sourcing script
    CHILD_TICKS=$(awk -v hz="$CLK_TCK" 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%d", t * hz }' "$T/times.txt")
}

# ---------------------------------------------------------------------------------------------
# Summary.
# describe_checkout: sets GIT_REV (commit or "unknown") and GIT_DESC (for the summary) of ROOT.
describe_checkout() {
    if GIT_REV=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null); then
        GIT_DESC="commit ${GIT_REV:0:12}"
        git -C "$ROOT" diff --quiet HEAD 2>/dev/null || GIT_DESC+=", work tree modified"
    else
        GIT_REV=unknown
        GIT_DESC="not a git checkout"
    fi
}
num() { [[ -n ${1:-} ]] && echo "$1" || echo "-"; }
# JSON (one line).
jstr() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
jnum() { [[ -n ${1:-} && ${1:-} != "-" ]] && printf '%s' "$1" || printf null; }
