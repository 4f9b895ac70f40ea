#!/usr/bin/env bash
# DNS benchmark: the strait gateway's DNS server beside Knot DNS and NSD, in one run on this
# machine, with the same zone and the same query mixes (dnsperf). See bench/README.md ("DNS
# benchmark") for what is measured and how to read it.
#
#   bench/dns.sh                     # build strait, install what is missing, run everything
#   BENCH_ROUNDS=1 bench/dns.sh      # one round instead of three: faster, noisier
#
# Settings (environment): BENCH_DURATION (s of one timed run, default 5), BENCH_ROUNDS (timed
# runs of each server and mix, interleaved, the median is reported, 3), BENCH_WARMUP (s of
# dnsperf before each timed run, 1), BENCH_IDLE_SECONDS (s of no load over which each server's
# idle CPU is measured, 5), BENCH_SERVICES (services applied; each gives two A names,
# 5000), BENCH_CLIENTS (dnsperf -c, sockets, 8), BENCH_OUTSTANDING (dnsperf -q, 100),
# BENCH_DNSPERF_THREADS (dnsperf -T, 1), BENCH_WORKERS (worker threads of Knot and server
# processes of NSD, default: number of cores, which is also how many UDP sockets strait uses),
# BENCH_MAX_SECONDS (hard limit after the build, 600), BENCH_PORT_BASE (first loopback port
# tried), STRAIT_BIN (use this binary, skip the build), BENCH_INSTALL_ONLY=1 (install the tools,
# run nothing), BENCH_NO_INSTALL=1 (never install), BENCH_KEEP=1 (keep the temporary folder and
# its logs), BENCH_ONLY (space-separated subset of the servers: strait knot nsd), BENCH_MIXES
# (the runs, from: a-mix aaaa-nodata a-hit a-miss, each also as MIX@RATE for a run at a fixed
# rate of RATE queries/s), BENCH_RATE (the rate of the fixed-rate a-mix run, 20000; 0: none).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

DURATION=${BENCH_DURATION:-5}
WARMUP=${BENCH_WARMUP:-1}
IDLE_SECONDS=${BENCH_IDLE_SECONDS:-5}
SERVICES=${BENCH_SERVICES:-5000}
CLIENTS=${BENCH_CLIENTS:-8}
ROUNDS=${BENCH_ROUNDS:-3}
OUTSTANDING=${BENCH_OUTSTANDING:-100}
PERF_THREADS=${BENCH_DNSPERF_THREADS:-1}
NCPU=$(nproc 2>/dev/null || echo 2)
WORKERS=${BENCH_WORKERS:-$NCPU}
MAX_SECONDS=${BENCH_MAX_SECONDS:-600}
ONLY=" ${BENCH_ONLY:-strait knot nsd} "
RATE=${BENCH_RATE:-20000}
DEFAULT_MIXES="a-mix aaaa-nodata a-hit a-miss"
((RATE > 0)) && DEFAULT_MIXES+=" a-mix@$RATE"
read -r -a MIXES <<<"${BENCH_MIXES:-$DEFAULT_MIXES}"
CLK_TCK=$(getconf CLK_TCK)
ZONE=clusterset.local
NS=bench
DIG=(dig +noedns +nocookie +norec +time=2 +tries=1)

# Shared helpers (logging, process bookkeeping and the cleanup trap, the watchdog, installing
# tools, loopback ports, templates, CPU of finished children, JSON): see common.sh.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$SCRIPT_DIR/common.sh"

# ---------------------------------------------------------------------------------------------
# Tools: install what is missing (apt_install and need are in common.sh). Daemons live in sbin,
# which is not always on a non-root PATH; only this script looks there, so it is added here and
# not in need.
PATH=$PATH:/usr/sbin:/sbin
need curl curl
need awk gawk mawk
need shuf coreutils
if ! need dnsperf dnsperf; then
    log "FATAL: dnsperf (the load generator) is missing and could not be installed"
    exit 1
fi
if ! need dig bind9-dnsutils dnsutils; then
    log "FATAL: dig (which checks every server's answers) is missing and could not be installed"
    exit 1
fi
HAVE_KNOT=1; need knotd knot || HAVE_KNOT=0
HAVE_NSD=1; need nsd nsd || HAVE_NSD=0
if [[ ${BENCH_INSTALL_ONLY:-0} == 1 ]]; then
    log "tools ready: dnsperf=1 dig=1 knot=$HAVE_KNOT nsd=$HAVE_NSD"
    exit 0
fi
if ! want strait; then
    log "FATAL: the zone comes from strait's gateway; BENCH_ONLY must include strait"
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# strait itself.
STRAIT=""
if [[ -n ${STRAIT_BIN:-} ]]; then
    STRAIT=$STRAIT_BIN
elif ! command -v cargo >/dev/null; then
    log "FATAL: cargo is not installed (set STRAIT_BIN to use a built strait)"
    exit 1
else
    log "cargo build --release --bin strait --bin strait-proxy (in $ROOT)"
    if ! (cd "$ROOT" && cargo build --release --bin strait --bin strait-proxy >&2); then
        log "FATAL: cargo build --release --bin strait --bin strait-proxy failed"
        exit 1
    fi
    STRAIT="${CARGO_TARGET_DIR:-$ROOT/target}/release/strait"
fi
if [[ ! -x $STRAIT ]]; then
    log "FATAL: $STRAIT is not an executable"
    exit 1
fi
STRAIT_VERSION=$("$STRAIT" --version 2>/dev/null | head -n 1 || true)
# The checkout as it was built (others may commit while the benchmark runs).
describe_checkout
[[ -n ${STRAIT_BIN:-} ]] && GIT_DESC="binary $STRAIT_BIN; checkout at $GIT_DESC"

# From here on the run is bounded in time.
T=$(mktemp -d -t strait-dns-bench.XXXXXX)
mkdir -p "$T/logs" "$T/mixes" "$T/knot" "$T/nsd"
start_watchdog
RUN_START=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Loopback ports: free TCP and UDP ports below the ephemeral range.
# (port and render are in common.sh)
refresh_used_ports

# ---------------------------------------------------------------------------------------------
# /proc readings.
tree_pids() { # PID and every process below it (NSD forks its servers and xfrd)
    local f line pid ppid c
    local -A kids=()
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        pid=${line%% *}
        line=${line##*) }
        ppid=${line#* }
        ppid=${ppid%% *}
        kids[$ppid]+="$pid "
    done
    local out=() queue=("$1")
    while ((${#queue[@]} > 0)); do
        out+=("${queue[0]}")
        for c in ${kids[${queue[0]}]:-}; do queue+=("$c"); done
        queue=("${queue[@]:1}")
    done
    echo "${out[*]}"
}
tree_ticks() { # utime+stime of a process tree, all threads, plus what its reaped children used
    local p sum=0 t
    for p in $(tree_pids "$1"); do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}
tree_mem_kb() { # proportional set size (Pss) of a process tree: shared pages counted once
    local p sum=0 r
    for p in $(tree_pids "$1"); do
        r=$(awk '/^Pss:/ { print $2; exit }' "/proc/$p/smaps_rollup" 2>/dev/null || true)
        [[ -n $r ]] || r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
        sum=$((sum + ${r:-0}))
    done
    echo "$sum"
}
tree_switches() { # context switches of a process tree, every thread (each is a sleep or a preemption)
    local p sum=0 t
    for p in $(tree_pids "$1"); do
        t=$(cat "/proc/$p/task/"*/status 2>/dev/null |
            awk '/^(non)?voluntary_ctxt_switches:/ { n += $2 } END { printf "%d", n }')
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}
# snapshot FILE: pid, parent and CPU ticks of every process of the machine. Other processes' CPU
# is summed from these rather than from /proc/stat, whose busy and idle counts are sampled ticks
# that stray far from the processes' own (exact) figures on a machine that is partly idle.
snapshot() {
    local f line
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        echo "${line%% *} ${line##*) }"
    done | awk '{ print $1, $3, $13 + $14 }' >"$1"
}
# others_ticks BEFORE AFTER: CPU ticks used between two snapshots by processes that are not this
# script or below it (the servers, dnsperf); a process that appeared meanwhile counts whole, one
# that ended meanwhile is missed.
others_ticks() {
    awk -v self=$$ 'FNR == NR { before[$1] = $3; next }
        { parent[$1] = $2; now[$1] = $3 }
        END {
            for (p in now) { q = p; for (hops = 0; q > 1 && q != self && hops < 64; hops++) q = parent[q]; if (q == self) continue
                sum += (p in before) ? now[p] - before[p] : now[p] }
            printf "%d", sum }' "$1" "$2"
}
# children_ticks (CPU of dnsperf once it has finished) is in common.sh.

# How busy the machine is before we start (other builds or tests skew every figure).
snapshot "$T/snap0"
sleep 2
snapshot "$T/snap1"
BACKGROUND_BUSY=$(awk -v o="$(others_ticks "$T/snap0" "$T/snap1")" -v hz="$CLK_TCK" -v n="$NCPU" \
    'BEGIN { printf "%.0f", 100 * o / hz / (2 * n) }')
if ((BACKGROUND_BUSY > 10)); then
    log "WARNING: the machine is already ${BACKGROUND_BUSY}% busy before the benchmark starts; figures will be skewed"
fi

# wait_http URL SECONDS: until a GET returns 200.
wait_http() {
    local url=$1 secs=$2
    for _ in $(seq $((secs * 5))); do
        if [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null) == 200 ]]; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Answers: every server is checked before each timed run, so a broken one cannot post a figure.
# ask PORT NAME TYPE: dig's full output (no EDNS, as dnsperf sends).
ask() { "${DIG[@]}" @127.0.0.1 -p "$1" "$2" "$3" 2>&1 || true; }
status_of() { awk '/->>HEADER<<-/ { s = $6; sub(/,$/, "", s); print s; exit }'; }
count_of() { awk -v what="$1" '/;; flags:/ { for (i = 1; i <= NF; i++) if ($i == what ":") { v = $(i + 1); sub(/,$/, "", v); print v; exit } }'; }
msg_size() { awk '/MSG SIZE/ { print $NF; exit }'; }

# check_server NAME PORT: one hit answers its address, one miss NXDOMAIN with the SOA, one AAAA
# of an IPv4-only name NOERROR with no answer and the SOA; plus a sample of addresses.
check_server() {
    local name=$1 port=$2 out s n a i hit addr got
    hit=${HIT_NAMES[0]}
    out=$(ask "$port" "$hit.$ZONE" A)
    s=$(status_of <<<"$out")
    got=$(awk '$4 == "A" { print $5; exit }' <<<"$out")
    if [[ $s != NOERROR || $got != "${HIT_ADDRS[0]}" ]]; then
        CHECK_WHY="A $hit.$ZONE: status ${s:-none}, address ${got:-none}, expected NOERROR ${HIT_ADDRS[0]}"
        return 1
    fi
    out=$(ask "$port" "nothere-1.$NS.svc.$ZONE" A)
    s=$(status_of <<<"$out")
    a=$(count_of AUTHORITY <<<"$out")
    n=$(count_of ANSWER <<<"$out")
    if [[ $s != NXDOMAIN || $n != 0 || $a != 1 ]] || ! grep -q 'IN[[:space:]]*SOA' <<<"$out"; then
        CHECK_WHY="A nothere-1.$NS.svc.$ZONE: status ${s:-none}, $n answers, $a authority records, expected NXDOMAIN with the SOA"
        return 1
    fi
    out=$(ask "$port" "$hit.$ZONE" AAAA)
    s=$(status_of <<<"$out")
    a=$(count_of AUTHORITY <<<"$out")
    n=$(count_of ANSWER <<<"$out")
    if [[ $s != NOERROR || $n != 0 || $a != 1 ]] || ! grep -q 'IN[[:space:]]*SOA' <<<"$out"; then
        CHECK_WHY="AAAA $hit.$ZONE: status ${s:-none}, $n answers, $a authority records, expected NOERROR, no answer, the SOA"
        return 1
    fi
    for i in "${SAMPLE[@]}"; do
        addr=$("${DIG[@]}" +short @127.0.0.1 -p "$port" "${HIT_NAMES[$i]}.$ZONE" A 2>/dev/null || true)
        if [[ $addr != "${HIT_ADDRS[$i]}" ]]; then
            CHECK_WHY="A ${HIT_NAMES[$i]}.$ZONE answered '${addr//$'\n'/ }', expected ${HIT_ADDRS[$i]}"
            return 1
        fi
    done
    return 0
}

# wait_dns PORT SECONDS PID: until the server answers the zone's SOA (or PID dies).
wait_dns() {
    local port=$1 secs=$2 pid=$3
    for _ in $(seq $((secs * 5))); do
        if [[ $(ask "$port" "$ZONE" SOA | status_of) == NOERROR ]]; then return 0; fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Results.
SERVERS=()
declare -A PORT_OF PID_OF STATUS IDLE_MS MEM_KB SIZE_A SIZE_SRV SIZE_NX SIZE_NODATA
declare -A CPU_NOTE CPU_RANGE SWITCHES QPS QUERIES LOST_PCT LAT_MS CPU_US RESP_BYTES RCODES OTHER RUN_STATUS # key: server/mix
for s in strait knot nsd; do STATUS[$s]="not run"; done

# ---------------------------------------------------------------------------------------------
# 1. strait's gateway, with SERVICES exported services applied through its API.
export STRAIT_CONFIG=$T/strait/contexts.yaml
D=$T/strait
mkdir -p "$D"
port; GW_QUIC=$PORT; port; GW_API=$PORT; port; GW_ADMIN=$PORT; port; GW_DNS=$PORT
log "strait: trust and gateway (DNS on 127.0.0.1:$GW_DNS)"
{
    "$STRAIT" trust init --trust-domain bench.mesh --dir "$D/trust" &&
        "$STRAIT" gateway init --cluster east --trust "$D/trust" --dir "$D/east" \
            --quic-addr "127.0.0.1:$GW_QUIC" --api-addr "127.0.0.1:$GW_API" \
            --admin-addr "127.0.0.1:$GW_ADMIN" --dns-addr "127.0.0.1:$GW_DNS"
} >"$T/logs/strait-init.log" 2>&1 || {
    log "FATAL: strait init failed:"
    cat "$T/logs/strait-init.log" >&2
    exit 1
}
start strait "$STRAIT" gateway run --config "$D/east/gateway.yaml"
PID_OF[strait]=$LAST_PID
PORT_OF[strait]=$GW_DNS
if ! wait_http "http://127.0.0.1:$GW_ADMIN/readyz" 30; then
    log "FATAL: the strait gateway was not ready within 30 s:"
    tail -n 30 "$T/logs/strait.log" >&2 || true
    exit 1
fi

log "strait: applying $SERVICES exported services (namespace $NS)"
awk -v n="$SERVICES" -v ns="$NS" 'BEGIN {
    for (i = 1; i <= n; i++) {
        printf "---\napiVersion: strait.dev/v1alpha1\nkind: Service\nmetadata: {name: svc-%05d, namespace: %s}\n", i, ns
        printf "spec:\n  export: true\n  ports: [{name: http, port: 8080, protocol: http}]\n"
        printf "  endpoints: [{address: \"10.%d.%d.%d:8080\"}]\n", 1 + int(i / 65536), int(i / 256) % 256, i % 256
    } }' >"$D/services.yaml"
t0=$(date +%s.%N)
if ! "$STRAIT" --context east apply -f "$D/services.yaml" >"$T/logs/strait-apply.log" 2>&1; then
    log "FATAL: strait apply failed:"
    tail -n 20 "$T/logs/strait-apply.log" >&2
    exit 1
fi
APPLY_SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

# The names and their virtual addresses, as the gateway wrote them down.
WANT_NAMES=$((2 * SERVICES))
live_names() { # name v4 per line, from vips.json (one line of JSON; released names left out)
    [[ -s $D/east/vips.json ]] || return 0
    grep -o '{[^{}]*}' "$D/east/vips.json" | grep -v '"released"' |
        sed -n 's/.*"name":"\([^"]*\)".*"v4":"\([^"]*\)".*/\1 \2/p' || true
}
for _ in $(seq 150); do
    live_names >"$T/names.txt"
    [[ $(wc -l <"$T/names.txt") -ge $WANT_NAMES ]] && break
    sleep 0.2
done
if [[ $(wc -l <"$T/names.txt") -lt $WANT_NAMES ]]; then
    log "FATAL: vips.json has $(wc -l <"$T/names.txt") names after the apply, expected $WANT_NAMES"
    exit 1
fi
log "strait: $WANT_NAMES names with addresses after ${APPLY_SECS}s (apply and zone)"
mapfile -t HIT_NAMES < <(awk '{ print $1 }' "$T/names.txt")
mapfile -t HIT_ADDRS < <(awk '{ print $2 }' "$T/names.txt")
SAMPLE=()
STEP=$(((${#HIT_NAMES[@]} - 1) / 19))
((STEP > 0)) || STEP=1
for i in $(seq 0 "$STEP" $((${#HIT_NAMES[@]} - 1))); do SAMPLE+=("$i"); done

# ---------------------------------------------------------------------------------------------
# 2. The same zone as a zone file: SOA and NS as strait answers them (ns.dns, hostmaster, TTL
# and negative TTL 5 s, refresh 3600, retry 600, expire 86400), an A record and the SRV record
# of each name. No address for ns.dns, as strait has none.
ZONEFILE=$T/$ZONE.zone
SERIAL=$(date +%s)
{
    # shellcheck disable=SC2016 # zone-file directives, not shell variables
    printf '$ORIGIN %s.\n$TTL 5\n' "$ZONE"
    printf '@ IN SOA ns.dns.%s. hostmaster.%s. %s 3600 600 86400 5\n' "$ZONE" "$ZONE" "$SERIAL"
    printf '@ IN NS ns.dns.%s.\n' "$ZONE"
    awk -v z="$ZONE" '{ printf "%s IN A %s\n_http._tcp.%s IN SRV 0 100 8080 %s.%s.\n", $1, $2, $1, $1, z }' "$T/names.txt"
} >"$ZONEFILE"

# ---------------------------------------------------------------------------------------------
# 3. The query mixes (dnsperf data files), shuffled with a fixed seed so that every run asks
# the same sequence. Misses take both name forms: nothere-N.<ns>.svc and east.nothere-N.<ns>.svc.
awk 'BEGIN { for (i = 0; i < 65536; i++) printf "strait-dns-bench" }' >"$T/seed"
awk -v ns="$NS" -v n="$WANT_NAMES" -v z="$ZONE" 'BEGIN {
    for (i = 1; i <= n; i++) printf (i % 2 ? "nothere-%d.%s.svc.%s A\n" : "east.nothere-%d.%s.svc.%s A\n"), i, ns, z }' \
    >"$T/misses.txt"
awk -v z="$ZONE" '{ print $1 "." z " A" }' "$T/names.txt" >"$T/hits.txt"
for _ in $(seq 9); do cat "$T/hits.txt"; done | shuf --random-source="$T/seed" >"$T/mixes/a-hit"
{ for _ in $(seq 9); do cat "$T/hits.txt"; done; cat "$T/misses.txt"; } |
    shuf --random-source="$T/seed" >"$T/mixes/a-mix"
shuf --random-source="$T/seed" "$T/misses.txt" >"$T/mixes/a-miss"
awk -v z="$ZONE" '{ print $1 "." z " AAAA" }' "$T/names.txt" | shuf --random-source="$T/seed" >"$T/mixes/aaaa-nodata"
declare -A MIX_LINES
for m in "${MIXES[@]}"; do
    if [[ ! -s $T/mixes/${m%@*} ]] || { [[ $m == *@* ]] && ! [[ ${m#*@} =~ ^[1-9][0-9]*$ ]]; }; then
        log "FATAL: unknown mix $m (BENCH_MIXES: a-mix aaaa-nodata a-hit a-miss, each also as MIX@RATE)"
        exit 1
    fi
    MIX_LINES[$m]=$(wc -l <"$T/mixes/${m%@*}")
done

# ---------------------------------------------------------------------------------------------
# 4. Knot and NSD on the zone file, in the foreground, as children of this script.
SERVERS+=(strait)
STATUS[strait]=ok
if ! want knot; then
    STATUS[knot]="skipped (BENCH_ONLY)"
elif [[ $HAVE_KNOT == 0 ]]; then
    STATUS[knot]="skipped: knotd could not be installed (apt-get install knot)"
else
    port; PORT_OF[knot]=$PORT
    mkdir -p "$T/knot/db"
    render "$SCRIPT_DIR/dns-knot.conf.in" "$T/knot/knot.conf" "DIR=$T/knot" "PORT=${PORT_OF[knot]}" \
        "WORKERS=$WORKERS" "ZONE=$ZONE" "ZONEFILE=$ZONEFILE"
    start knot knotd -c "$T/knot/knot.conf"
    PID_OF[knot]=$LAST_PID
    if wait_dns "${PORT_OF[knot]}" 30 "${PID_OF[knot]}"; then
        SERVERS+=(knot)
        STATUS[knot]=ok
    else
        STATUS[knot]="failed: knotd did not answer the zone within 30 s"
        log "knotd did not answer; its log:"
        tail -n 20 "$T/logs/knot.log" >&2 || true
    fi
fi
if ! want nsd; then
    STATUS[nsd]="skipped (BENCH_ONLY)"
elif [[ $HAVE_NSD == 0 ]]; then
    STATUS[nsd]="skipped: nsd could not be installed (apt-get install nsd)"
else
    port; PORT_OF[nsd]=$PORT
    render "$SCRIPT_DIR/dns-nsd.conf.in" "$T/nsd/nsd.conf" "DIR=$T/nsd" "PORT=${PORT_OF[nsd]}" \
        "WORKERS=$WORKERS" "ZONE=$ZONE" "ZONEFILE=$ZONEFILE"
    start nsd nsd -d -c "$T/nsd/nsd.conf"
    PID_OF[nsd]=$LAST_PID
    if wait_dns "${PORT_OF[nsd]}" 30 "${PID_OF[nsd]}"; then
        SERVERS+=(nsd)
        STATUS[nsd]=ok
    else
        STATUS[nsd]="failed: nsd did not answer the zone within 30 s"
        log "nsd did not answer; its logs:"
        tail -n 20 "$T/logs/nsd.log" "$T/nsd/nsd.log" >&2 || true
    fi
fi

# Every server must give the right answers before anything is measured; a wrong one is left out.
# Response sizes (no EDNS): one A, one SRV (with the target's address added), one miss, one
# AAAA without data.
CHECKED=()
for s in "${SERVERS[@]}"; do
    CHECK_WHY=""
    if check_server "$s" "${PORT_OF[$s]}"; then
        CHECKED+=("$s")
        p=${PORT_OF[$s]}
        SIZE_A[$s]=$(ask "$p" "${HIT_NAMES[0]}.$ZONE" A | msg_size)
        SIZE_SRV[$s]=$(ask "$p" "_http._tcp.${HIT_NAMES[0]}.$ZONE" SRV | msg_size)
        SIZE_NX[$s]=$(ask "$p" "nothere-1.$NS.svc.$ZONE" A | msg_size)
        SIZE_NODATA[$s]=$(ask "$p" "${HIT_NAMES[0]}.$ZONE" AAAA | msg_size)
        log "$s answers right (sizes: A ${SIZE_A[$s]}, SRV ${SIZE_SRV[$s]}, NXDOMAIN ${SIZE_NX[$s]}, NODATA ${SIZE_NODATA[$s]} bytes)"
    else
        STATUS[$s]="failed: wrong answer: $CHECK_WHY"
        log "$s: ${STATUS[$s]}"
    fi
done
SERVERS=("${CHECKED[@]+"${CHECKED[@]}"}")
if [[ ${SERVERS[0]:-} != strait ]]; then
    log "FATAL: strait's gateway does not answer right: ${STATUS[strait]}"
    exit 1
fi
# Memory with the zone loaded, and the CPU each server uses while nobody asks it anything.
declare -A IDLE0
for s in "${SERVERS[@]}"; do
    MEM_KB[$s]=$(tree_mem_kb "${PID_OF[$s]}")
    IDLE0[$s]=$(tree_ticks "${PID_OF[$s]}")
done
log "idle for ${IDLE_SECONDS}s (CPU of each server without queries)"
sleep "$IDLE_SECONDS"
for s in "${SERVERS[@]}"; do
    IDLE_MS[$s]=$(awk -v d=$(($(tree_ticks "${PID_OF[$s]}") - IDLE0[$s])) -v hz="$CLK_TCK" -v t="$IDLE_SECONDS" \
        'BEGIN { printf "%.1f", d / hz * 1000 / t }')
done

# ---------------------------------------------------------------------------------------------
# 5. The timed runs: for each mix, each server in turn (so that a slow drift of the machine
# touches every server alike). The answers are checked again before each run.
declare -A EXPECT_NX=([a-mix]=10 [a-hit]=0 [a-miss]=100 [aaaa-nodata]=0)

# measure SERVER MIX ROUND: one timed run; its figures under the key SERVER/MIX#ROUND.
measure() {
    local s=$1 m=$2 key=$1/$2#$3 p=${PORT_OF[$1]} pid=${PID_OF[$1]} out c0 c1 g0 w0 w1 m0 m1 o1 nx
    CHECK_WHY=""
    if ! kill -0 "$pid" 2>/dev/null; then
        RUN_STATUS[$key]="failed: the server exited"
        return 0
    fi
    if ! check_server "$s" "$p"; then
        RUN_STATUS[$key]="failed: wrong answer: $CHECK_WHY"
        log "$key: ${RUN_STATUS[$key]}"
        return 0
    fi
    local perf=(dnsperf -s 127.0.0.1 -p "$p" -d "$T/mixes/${m%@*}" -c "$CLIENTS" -T "$PERF_THREADS"
        -q "$OUTSTANDING" -t 2)
    [[ $m == *@* ]] && perf+=(-Q "${m#*@}")
    if ((WARMUP > 0)); then
        timeout $((WARMUP + 30)) "${perf[@]}" -l "$WARMUP" >"$T/logs/$s.$m.$3.warmup.txt" 2>&1 || true
    fi
    log "$key: ${perf[*]:7} -l$DURATION (${MIX_LINES[$m]} queries in the file)"
    out=$T/logs/$s.$m.$3.dnsperf.txt
    snapshot "$T/snap0"
    m0=$(date +%s%N)
    children_ticks
    c0=$(tree_ticks "$pid")
    w0=$(tree_switches "$pid")
    g0=$CHILD_TICKS
    if ! timeout $((DURATION + 30)) "${perf[@]}" -l "$DURATION" >"$out" 2>&1; then
        RUN_STATUS[$key]="failed: dnsperf exited non-zero (see below)"
        sed 's/^/    /' "$out" >&2
        return 0
    fi
    c1=$(tree_ticks "$pid")
    w1=$(tree_switches "$pid")
    children_ticks
    m1=$(date +%s%N)
    snapshot "$T/snap1"
    o1=$(others_ticks "$T/snap0" "$T/snap1")
    CPU_NOTE[$key]=$(awk -v s=$((c1 - c0)) -v g=$((CHILD_TICKS - g0)) -v o="$o1" -v hz="$CLK_TCK" -v ns=$((m1 - m0)) -v n="$NCPU" 'BEGIN {
        printf "CPU-s: server %.2f, dnsperf %.2f, other processes %.2f, in %.2f s on %d cores", s / hz, g / hz, o / hz, ns / 1e9, n }')
    OTHER[$key]=$(awk -v o="$o1" -v hz="$CLK_TCK" -v ns=$((m1 - m0)) -v n="$NCPU" 'BEGIN {
        if (ns > 0) printf "%.0f", 100 * (o / hz) / (ns / 1e9 * n); else print 0 }')
    QUERIES[$key]=$(awk '/Queries completed:/ { print $3; exit }' "$out")
    LOST_PCT[$key]=$(awk '/Queries lost:/ { v = $4; gsub(/[()%]/, "", v); print v; exit }' "$out")
    QPS[$key]=$(awk '/Queries per second:/ { printf "%.0f", $4; exit }' "$out")
    LAT_MS[$key]=$(awk '/Average Latency/ { printf "%.3f", $4 * 1000; exit }' "$out")
    RESP_BYTES[$key]=$(awk '/Average packet size:/ { v = $NF; print v; exit }' "$out")
    RCODES[$key]=$(awk -F': *' '/Response codes:/ { gsub(/ \([^)]*\)/, "", $2); print $2; exit }' "$out")
    if [[ ${QUERIES[$key]:-0} -gt 0 ]]; then
        CPU_US[$key]=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="${QUERIES[$key]}" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
        SWITCHES[$key]=$(awk -v d=$((w1 - w0)) -v n="${QUERIES[$key]}" 'BEGIN { printf "%.2f", d / n }')
    fi
    # The rcodes must be those of the mix: all NOERROR, all NXDOMAIN, or 10 % NXDOMAIN.
    nx=$(awk '/Response codes:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[A-Z]+$/) { n[$i] = $(i + 1); sub(/,$/, "", n[$i]); t += n[$i] } }
        END { if (t > 0) printf "%.1f %d", 100 * n["NXDOMAIN"] / t, t - n["NOERROR"] - n["NXDOMAIN"]; else print "-1 0" }' "$out")
    RUN_STATUS[$key]=ok
    local want=${EXPECT_NX[${m%@*}]} got=${nx% *} odd=${nx#* }
    if [[ $odd != 0 ]] || ! awk -v g="$got" -v w="$want" 'BEGIN { d = g - w; if (d < 0) d = -d; exit !(g >= 0 && d <= 2) }'; then
        RUN_STATUS[$key]="wrong rcodes: ${RCODES[$key]:-none} (expected $want % NXDOMAIN, the rest NOERROR)"
    fi
    if awk -v l="${LOST_PCT[$key]:-0}" 'BEGIN { exit !(l > 1) }'; then
        RUN_STATUS[$key]+=", ${LOST_PCT[$key]}% lost"
    fi
    if ((OTHER[$key] > 10)); then
        RUN_STATUS[$key]+=", skewed: ${OTHER[$key]}% of the machine's CPU went to other processes"
    fi
    log "$key: ${QPS[$key]} q/s, ${CPU_US[$key]:-n/a} us CPU/query, lost ${LOST_PCT[$key]:-?}%, rcodes ${RCODES[$key]:-?}, other ${OTHER[$key]}% (${CPU_NOTE[$key]})"
}

for r in $(seq "$ROUNDS"); do
    ((ROUNDS > 1)) && log "round $r of $ROUNDS"
    for m in "${MIXES[@]}"; do
        for s in "${SERVERS[@]}"; do
            measure "$s" "$m" "$r"
        done
    done
done

# The figures of a server and mix: the median round's (CPU, q/s, latency, switches each taken
# on its own), the spread of CPU per query over the rounds, queries summed, the worst loss and
# skew, and every round's problem in the status.
median() { # FORMAT, the values on stdin
    tr ' ' '\n' | awk -v f="$1" 'NF { v[++n] = $1 } END { if (n == 0) exit; asort_n(v, n)
        printf f "\n", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
    function asort_n(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t } }'; }
for m in "${MIXES[@]}"; do
    for s in "${SERVERS[@]}"; do
        k=$s/$m
        cpu="" qps="" lat="" sw="" queries=0 lost="" other="" problems="" skewed=0
        for r in $(seq "$ROUNDS"); do
            kr=$k#$r
            [[ -n ${RUN_STATUS[$kr]:-} ]] || continue
            RESP_BYTES[$k]=${RESP_BYTES[$k]:-${RESP_BYTES[$kr]:-}}
            RCODES[$k]=${RCODES[$k]:-${RCODES[$kr]:-}}
            if [[ ${RUN_STATUS[$kr]} == ok* || ${RUN_STATUS[$kr]} == wrong* ]]; then
                cpu+="${CPU_US[$kr]:-} " qps+="${QPS[$kr]:-} " lat+="${LAT_MS[$kr]:-} " sw+="${SWITCHES[$kr]:-} "
                queries=$((queries + ${QUERIES[$kr]:-0}))
                lost=$(awk -v a="${lost:-0}" -v b="${LOST_PCT[$kr]:-0}" 'BEGIN { print (b + 0 > a + 0) ? b : a }')
                other=$(( ${OTHER[$kr]:-0} > ${other:-0} ? ${OTHER[$kr]:-0} : ${other:-0} ))
            fi
            case ${RUN_STATUS[$kr]} in
            ok) ;;
            "ok, skewed"*) skewed=$((skewed + 1)) ;;
            *) problems+="${problems:+; }round $r: ${RUN_STATUS[$kr]#ok, }" ;;
            esac
        done
        [[ -z ${RUN_STATUS[$k#1]:-} ]] && continue
        CPU_US[$k]=$(median %.2f <<<"$cpu")
        QPS[$k]=$(median %.0f <<<"$qps")
        LAT_MS[$k]=$(median %.3f <<<"$lat")
        SWITCHES[$k]=$(median %.2f <<<"$sw")
        CPU_RANGE[$k]=$(tr ' ' '\n' <<<"$cpu" | awk 'NF { if (n++ == 0 || $1 + 0 < lo) lo = $1; if ($1 + 0 > hi) hi = $1 } END { if (n) printf "%s-%s", lo, hi }')
        ((queries > 0)) && QUERIES[$k]=$queries
        LOST_PCT[$k]=$lost
        OTHER[$k]=$other
        RUN_STATUS[$k]=${problems:-ok}
        ((skewed > 0)) && RUN_STATUS[$k]+=", skewed in $skewed of $ROUNDS rounds (other % above 10)"
    done
done
for s in "${SERVERS[@]}"; do
    kill -0 "${PID_OF[$s]}" 2>/dev/null || STATUS[$s]="exited during the run (see $T/logs/$s.log)"
done

# ---------------------------------------------------------------------------------------------
# Summary.
RUN_SECS=$(($(date +%s) - RUN_START))
ratio() { # ratio A B
    if [[ -n ${1:-} && -n ${2:-} ]]; then awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; else echo "-"; fi
}
version_of() {
    case $1 in
    strait) echo "${STRAIT_VERSION:-strait}" ;;
    knot) knotd -V 2>/dev/null | head -n 1 ;;
    nsd) nsd -v 2>&1 | head -n 1 ;;
    esac
}
ALL_SERVERS=(strait knot nsd)

{
    echo
    echo "== strait DNS benchmark =="
    echo "machine: $NCPU cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null), kernel $(uname -r);" \
        "${BACKGROUND_BUSY}% CPU busy before the start$( ((BACKGROUND_BUSY > 10)) && echo ' (NOT idle: figures skewed)')"
    echo "zone: $ZONE, $WANT_NAMES A names ($SERVICES exported services, two names each) with an SRV name each, SOA, NS;"
    echo "      strait's names and virtual addresses, written as a zone file for Knot and NSD"
    echo "load: dnsperf -c$CLIENTS -T$PERF_THREADS -q$OUTSTANDING -l$DURATION (after ${WARMUP}s warm-up), UDP, no EDNS, rounds: $ROUNDS;" \
        "Knot and NSD with $WORKERS workers, strait with one UDP socket per core;"
    echo "      a MIX@RATE run offers RATE queries/s (dnsperf -Q), the others as many as the server answers"
    echo "strait: ${STRAIT_VERSION:-n/a} ($GIT_DESC)"
    for s in "${ALL_SERVERS[@]}"; do
        printf '  %-7s %-40s %s\n' "$s" "$( [[ ${STATUS[$s]} == ok ]] && version_of "$s")" "${STATUS[$s]}"
    done
    echo
    printf '%-7s %-12s %8s %7s %7s %6s %9s %11s %8s %7s %6s %8s  %s\n' server mix "q/s" "lost %" "avg ms" "resp B" \
        "CPU us/q" "CPU range" "vs knot" "vs nsd" "csw/q" "other %" status
    for m in "${MIXES[@]}"; do
        for s in "${SERVERS[@]}"; do
            k=$s/$m
            printf '%-7s %-12s %8s %7s %7s %6s %9s %11s %8s %7s %6s %8s  %s\n' "$s" "$m" \
                "$(num "${QPS[$k]:-}")" "$(num "${LOST_PCT[$k]:-}")" "$(num "${LAT_MS[$k]:-}")" "$(num "${RESP_BYTES[$k]:-}")" \
                "$(num "${CPU_US[$k]:-}")" "$(num "${CPU_RANGE[$k]:-}")" "$(ratio "${CPU_US[$k]:-}" "${CPU_US[knot/$m]:-}")" \
                "$(ratio "${CPU_US[$k]:-}" "${CPU_US[nsd/$m]:-}")" "$(num "${SWITCHES[$k]:-}")" "$(num "${OTHER[$k]:-}")" \
                "${RUN_STATUS[$k]:-not run}"
        done
    done
    echo "  (each figure is the median of $ROUNDS interleaved runs; CPU us/q = the server's CPU time (user + system,"
    echo "   all threads and processes) per completed query, CPU range = its lowest and highest over the runs;"
    echo "   vs knot / vs nsd = CPU us/q over Knot's / NSD's for the same mix; csw/q = the server's context switches"
    echo "   per query (its threads going to sleep and waking); other % = share of the machine's CPU used by anything"
    echo "   but the server measured and dnsperf: above a few per cent the figures are disturbed)"
    echo
    echo "cost of a missing name and of a missing type, per server (CPU us/q of the mix over that of a-hit):"
    printf '%-7s %10s %15s %12s %8s %6s %6s %8s %9s\n' server "a-miss/hit" "aaaa-nodata/hit" "idle CPU ms/s" "mem MiB" "A B" "SRV B" "NXDOM B" "NODATA B"
    for s in "${SERVERS[@]}"; do
        printf '%-7s %10s %15s %12s %8s %6s %6s %8s %9s\n' "$s" "$(ratio "${CPU_US[$s/a-miss]:-}" "${CPU_US[$s/a-hit]:-}")" \
            "$(ratio "${CPU_US[$s/aaaa-nodata]:-}" "${CPU_US[$s/a-hit]:-}")" "$(num "${IDLE_MS[$s]:-}")" \
            "$(awk -v k="${MEM_KB[$s]:-0}" 'BEGIN { printf "%.1f", k / 1024 }')" "$(num "${SIZE_A[$s]:-}")" \
            "$(num "${SIZE_SRV[$s]:-}")" "$(num "${SIZE_NX[$s]:-}")" "$(num "${SIZE_NODATA[$s]:-}")"
    done
    echo "  (idle CPU: ms of CPU per second with no queries, over ${IDLE_SECONDS}s before the runs;"
    echo "   mem: Pss of the server's processes with the zone loaded, before the load; A/SRV/NXDOM/NODATA B: the size of"
    echo "   one answer of each kind as dig receives it without EDNS)"
    echo
    echo "run took ${RUN_SECS}s after the build"
} | tee "$T/summary.txt"

# JSON (one line; jstr and jnum are in common.sh).
runs_of() { # the CPU us/q of each round, comma-separated
    local r out=""
    for r in $(seq "$ROUNDS"); do out+="${out:+,}$(jnum "${CPU_US[$1#$r]:-}")"; done
    printf '%s' "$out"
}
{
    printf '{"benchmark":"strait-dns","cores":%s,"settings":{"rounds":%s,"duration_s":%s,"warmup_s":%s,"idle_s":%s,"services":%s,"names":%s,"clients":%s,"outstanding":%s,"dnsperf_threads":%s,"workers":%s},"background_cpu_busy_pct":%s,' \
        "$NCPU" "$ROUNDS" "$DURATION" "$WARMUP" "$IDLE_SECONDS" "$SERVICES" "$WANT_NAMES" "$CLIENTS" "$OUTSTANDING" "$PERF_THREADS" "$WORKERS" "$BACKGROUND_BUSY"
    printf '"strait_commit":%s,"servers":{' "$(jstr "$GIT_REV")"
    first=1
    for s in "${ALL_SERVERS[@]}"; do
        [[ $first == 1 ]] || printf ','
        first=0
        printf '%s:{"status":%s,"idle_cpu_ms_per_s":%s,"pss_kib":%s,"answer_bytes":{"a":%s,"srv":%s,"nxdomain":%s,"nodata":%s},"mixes":{' \
            "$(jstr "$s")" "$(jstr "${STATUS[$s]}")" "$(jnum "${IDLE_MS[$s]:-}")" "$(jnum "${MEM_KB[$s]:-}")" "$(jnum "${SIZE_A[$s]:-}")" \
            "$(jnum "${SIZE_SRV[$s]:-}")" "$(jnum "${SIZE_NX[$s]:-}")" "$(jnum "${SIZE_NODATA[$s]:-}")"
        mf=1
        for m in "${MIXES[@]}"; do
            k=$s/$m
            [[ -n ${RUN_STATUS[$k]:-} ]] || continue
            [[ $mf == 1 ]] || printf ','
            mf=0
            printf '%s:{"status":%s,"queries":%s,"qps":%s,"lost_pct":%s,"avg_latency_ms":%s,"response_bytes":%s,"cpu_us_per_query":%s,"cpu_us_per_query_range":%s,"cpu_us_per_query_runs":[%s],"cpu_vs_knot":%s,"cpu_vs_nsd":%s,"switches_per_query":%s,"other_cpu_pct":%s,"rcodes":%s}' \
                "$(jstr "$m")" "$(jstr "${RUN_STATUS[$k]}")" "$(jnum "${QUERIES[$k]:-}")" "$(jnum "${QPS[$k]:-}")" \
                "$(jnum "${LOST_PCT[$k]:-}")" "$(jnum "${LAT_MS[$k]:-}")" "$(jnum "${RESP_BYTES[$k]:-}")" \
                "$(jnum "${CPU_US[$k]:-}")" "$(jstr "${CPU_RANGE[$k]:-}")" "$(runs_of "$k")" "$(jnum "$(ratio "${CPU_US[$k]:-}" "${CPU_US[knot/$m]:-}")")" \
                "$(jnum "$(ratio "${CPU_US[$k]:-}" "${CPU_US[nsd/$m]:-}")")" "$(jnum "${SWITCHES[$k]:-}")" "$(jnum "${OTHER[$k]:-}")" \
                "$(jstr "${RCODES[$k]:-}")"
        done
        printf '}}'
    done
    printf '},"run_seconds":%s}\n' "$RUN_SECS"
} | tee "$T/summary.json"
