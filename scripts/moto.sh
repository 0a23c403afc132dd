#!/usr/bin/env bash
# Installs moto's server into .venv (once) and starts it on 127.0.0.1 for the EC2 and Auto Scaling integration tests.
#
#   scripts/moto.sh install          create .venv and pip install 'moto[server]' (idempotent)
#   scripts/moto.sh start [PORT]     install if needed, start moto_server in the background, wait until it answers,
#                                    print `export BERTH_MOTO_ENDPOINT=http://127.0.0.1:PORT` (pid in .venv/moto.pid)
#   scripts/moto.sh stop             stop the server started by `start`
#
# The tests (tests/moto*.rs) read BERTH_MOTO_ENDPOINT; without it they start .venv/bin/moto_server themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PORT="${2:-5055}"

install() {
  if [ ! -x "$VENV/bin/moto_server" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5.1,<6'
  fi
}

case "${1:-start}" in
  install)
    install
    ;;
  start)
    install
    # Instance types are validated against moto's bundled catalog (the same one data/aws/ comes from), and the
    # 1,300 default AMIs are not loaded: the tests register their own.
    MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION=true MOTO_EC2_LOAD_DEFAULT_AMIS=false \
      nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$VENV/moto.log" 2>&1 &
    echo $! >"$VENV/moto.pid"
    for _ in $(seq 1 100); do
      if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/moto-api/')" 2>/dev/null; then
        echo "export BERTH_MOTO_ENDPOINT=http://127.0.0.1:$PORT"
        exit 0
      fi
      sleep 0.2
    done
    echo "moto_server did not answer on 127.0.0.1:$PORT; see $VENV/moto.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$VENV/moto.pid" ]; then kill "$(cat "$VENV/moto.pid")" 2>/dev/null || true; rm -f "$VENV/moto.pid"; fi
    ;;
  *)
    echo "usage: scripts/moto.sh install|start [PORT]|stop" >&2
    exit 2
    ;;
esac
