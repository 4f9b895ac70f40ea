#!/usr/bin/env bash
# Soak: a demo-sized mesh (two gateways, shop/api in both clusters, a client sidecar) under
# cross-cluster load for 10 minutes at 2,000 requests a second, a policy change every 5 s and
# one restart of east's gateway in the middle. Prints errors by phase and every process's memory
# every 10 s, then one JSON line (`"benchmark":"strait-soak"`).
#
#   bench/soak.sh                             # 600 s at 2,000 req/s, release build
#   SOAK_SECONDS=120 SOAK_RPS=500 bench/soak.sh
#   STRAIT_BIN=/path/to/strait bench/soak.sh  # use that binary, skip its build
#
# Installs nothing beyond the build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${STRAIT_BIN:-}" ]; then
    cargo build --release --bin strait --bin strait-proxy
    STRAIT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/strait"
    export STRAIT_BIN
fi
exec cargo bench -p strait-tests --bench soak
