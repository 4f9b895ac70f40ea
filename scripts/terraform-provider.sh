#!/usr/bin/env bash
# Builds strait's Terraform provider (terraform-provider-strait, source address
# strait.dev/strait/strait) and places it where Terraform finds it offline: the implied local
# mirror ~/.terraform.d/plugins/strait.dev/strait/strait/VERSION/OS_ARCH/. Prints the path.
#
#   scripts/terraform-provider.sh            # release build
#   scripts/terraform-provider.sh --debug    # debug build (what the tests use)
#
# It builds the workspace's binaries (the provider and `strait`, which makes the contexts the
# provider reads) in one go, so the build shares its artifacts with the tests' own.
#
# STRAIT_TERRAFORM_PLUGINS names another plugins folder (then point Terraform at it with a
# filesystem_mirror in its CLI configuration, as the tests do).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
case "${1:-}" in
"") ;;
--debug) profile=debug ;;
*)
    echo "usage: $0 [--debug]" >&2
    exit 2
    ;;
esac

version=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)
case "$(uname -m)" in
x86_64) arch=amd64 ;;
aarch64 | arm64) arch=arm64 ;;
*) arch=$(uname -m) ;;
esac
os=$(uname -s | tr '[:upper:]' '[:lower:]')

if [ "$profile" = release ]; then
    cargo build --release --locked --workspace --bins >&2
else
    cargo build --locked --workspace --bins >&2
fi

plugins=${STRAIT_TERRAFORM_PLUGINS:-${HOME:?neither STRAIT_TERRAFORM_PLUGINS nor HOME is set}/.terraform.d/plugins}
dir=$plugins/strait.dev/strait/strait/$version/${os}_$arch
mkdir -p "$dir"
# A copy, not a link: Terraform records the package's hash in a configuration's lock file.
install -m 0755 "${CARGO_TARGET_DIR:-target}/$profile/terraform-provider-strait" "$dir/terraform-provider-strait_v$version.new"
mv "$dir/terraform-provider-strait_v$version.new" "$dir/terraform-provider-strait_v$version"
echo "$dir/terraform-provider-strait_v$version"
