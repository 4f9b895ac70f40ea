#!/usr/bin/env bash
# Federation at scale: ten gateways linked as a full mesh, 1,000 services exported by each
# (10,000 in the clusterset), 100 light sidecars following each gateway's catalog stream.
# Measures a steady minute and a run of one-service changes, then prints one JSON line
# (`"benchmark":"strait-scale"`) as the last line on stdout; progress and a table go to stderr.
#
#   bench/scale.sh                             # release build, then the run (~4 minutes)
#   STRAIT_BIN=/path/to/strait bench/scale.sh  # use that binary, skip its build
#   SCALE_GATEWAYS=4 SCALE_SERVICES=200 SCALE_SIDECARS=10 SCALE_STEADY_SECONDS=10 bench/scale.sh
#
# Installs nothing beyond the build. Every process listens on loopback only and is stopped when
# the run ends; the run stops itself (and its gateways) after SCALE_MAX_SECONDS (600) of running.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${STRAIT_BIN:-}" ]; then
    cargo build --release --bin strait --bin strait-proxy >&2
    STRAIT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/strait"
    export STRAIT_BIN
fi
exec cargo bench -p strait-tests --bench scale
