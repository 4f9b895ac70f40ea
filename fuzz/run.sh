#!/usr/bin/env bash
# Runs the cargo-fuzz targets one after another for a given time or a given number of
# executions each, in one fuzzing process, and says per target how many inputs
# were executed and whether a crash was found. Needs cargo-fuzz and a nightly toolchain.
#
#   fuzz/run.sh SECONDS [TARGET...]       every target when none is named
#   fuzz/run.sh --runs N [TARGET...]      N executions each, however long they take
#
# FUZZ_SANITIZER (default: address) is cargo-fuzz's --sanitizer; `none` runs about twice as
# fast and still catches panics, timeouts and memory limits, which is what safe Rust can hit.
#
# Each target's libFuzzer output is kept in fuzz/fuzz-<target>.log; a crash is written to
# fuzz/artifacts/<target>/. The exit status is 1 when any target crashed, 2 on bad usage, 3
# when cargo-fuzz or nightly is missing.

set -uo pipefail

cd "$(dirname "$0")"

usage() {
    echo "usage: $0 SECONDS [TARGET...] | $0 --runs N [TARGET...]" >&2
    exit 2
}

if [[ "${1:-}" == "--runs" ]]; then
    runs=${2:-}
    [[ "$runs" =~ ^[1-9][0-9]*$ ]] || usage
    shift 2
    budget=(-runs="$runs")
    budget_text="$runs runs"
else
    seconds=${1:-}
    [[ "$seconds" =~ ^[1-9][0-9]*$ ]] || usage
    shift
    budget=(-max_total_time="$seconds")
    budget_text="${seconds} s"
fi
sanitizer=${FUZZ_SANITIZER:-address}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "$0: no nightly toolchain; install one with: rustup toolchain install nightly" >&2
    exit 3
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "$0: cargo-fuzz is missing; install it with: cargo install cargo-fuzz" >&2
    exit 3
fi

known=$(cargo +nightly fuzz list) || exit 3
if [[ $# -gt 0 ]]; then
    targets=("$@")
    for target in "${targets[@]}"; do
        grep -qx "$target" <<<"$known" || {
            echo "$0: no target $target; the targets are:" $known >&2
            exit 2
        }
    done
else
    mapfile -t targets <<<"$known"
fi

echo "building the targets..."
cargo +nightly fuzz build --sanitizer "$sanitizer" || exit 1
# Run what was built, so that no target is rebuilt between runs (the tree may change meanwhile).
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin="target/$host/release"

crashed=0
summary=()
for target in "${targets[@]}"; do
    echo "== $target: $budget_text"
    mkdir -p "corpus/$target" "artifacts/$target"
    started=$(date +%s)
    "$bin/$target" -artifact_prefix="artifacts/$target/" "${budget[@]}" \
        -print_final_stats=1 "corpus/$target" >"fuzz-$target.log" 2>&1
    status=$?
    elapsed=$(($(date +%s) - started))
    log="fuzz-$target.log"
    executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    if [[ -z "$executions" ]]; then
        executions=$(grep -o '^#[0-9]*' "$log" | tr -d '#' | tail -1)
    fi
    if grep -qE 'Test unit written to|==ERROR|panicked at|deadly signal' "$log"; then
        verdict="CRASH (see $log and artifacts/$target/)"
        crashed=1
    elif [[ $status -ne 0 ]]; then
        verdict="FAILED with status $status (see $log)"
        crashed=1
    else
        verdict="no crash"
    fi
    line=$(printf '%-20s %12s executions in %ss  %s' "$target" "${executions:-?}" "$elapsed" "$verdict")
    echo "$line"
    summary+=("$line")
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $crashed
