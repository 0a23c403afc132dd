#!/usr/bin/env bash
# Cargo's rustc wrapper for the fuzz build (set in fuzz/.cargo/config.toml). cargo-fuzz puts its coverage
# instrumentation in RUSTFLAGS, which cargo applies to every crate; instrumenting aws-sdk-ec2 alone took over
# 17 minutes and 8 GB of memory on this shared 2-core machine (the whole build 31 min at load 10), and none of its
# code runs in a fuzz target. This keeps the
# instrumentation for the crates whose branches the fuzzer should learn (berth, the targets, and the parsers they
# call on every input) and removes it from the rest, so the build stays within CI's budget.
# `$1` is rustc; cargo sets CARGO_PKG_NAME for each crate it compiles.
set -euo pipefail
rustc=$1
shift
case "${CARGO_PKG_NAME:-}" in
  berth | berth-fuzz | serde_json | serde_yaml | unsafe-libyaml | regex-lite) exec "$rustc" "$@" ;;
esac
args=()
for arg in "$@"; do
  case "$arg" in
    -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-*) ;;
    *) args+=("$arg") ;;
  esac
done
exec "$rustc" "${args[@]}"
