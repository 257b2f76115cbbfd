#!/usr/bin/env bash
# A real multi-node Ray cluster on one machine: a head and N worker nodes, each a separate raylet with
# its own CPUs and a custom resource naming it (node_head, node_1, ...), for trying `raytrain submit`
# and multi-node tuning without cloud machines.
#
#   cluster/local_cluster.sh start [--workers 2] [--cpus 2] [--head-cpus 1] [--port 6390] [--dashboard-port 8270]
#   cluster/local_cluster.sh stop  [--port 6390]
#
# Token authentication: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... before `start` (every node gets the same
# environment); Ray 2.60 turns it on by default for `ray start --head`, so the script sets RAY_AUTH_MODE=disabled
# unless you chose. `stop` stops only this cluster (its processes carry its temp dir), not other Ray instances.
set -euo pipefail
cmd=${1:-}; shift || true
WORKERS=2 CPUS=2 HEAD_CPUS=1 PORT=6390 DASH=8270
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --head-cpus) HEAD_CPUS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --dashboard-port) DASH=$2; shift 2 ;;
    *) echo "local_cluster.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
RAY=${RAY:-$(command -v ray || echo "$(dirname "$0")/../.venv/bin/ray")}
TMP=/tmp/rt-cluster-$PORT   # short: Ray's unix socket paths must stay under 108 characters
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
node_ports() {  # every node on one host needs its own agent and metrics ports
  echo "--dashboard-agent-listen-port=$(free_port) --dashboard-agent-grpc-port=$(free_port)" \
       "--metrics-export-port=$(free_port) --runtime-env-agent-port=$(free_port)"
}

case "$cmd" in
  start)
    mkdir -p "$TMP"
    # shellcheck disable=SC2046
    "$RAY" start --head --node-ip-address=127.0.0.1 --port="$PORT" --temp-dir="$TMP" \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH" \
      --num-cpus="$HEAD_CPUS" --resources='{"node_head": 1}' $(node_ports) --disable-usage-stats >/dev/null
    for i in $(seq 1 "$WORKERS"); do
      # shellcheck disable=SC2046
      "$RAY" start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus="$CPUS" \
        --resources="{\"node_$i\": 1}" $(node_ports) --disable-usage-stats >/dev/null
    done
    echo "cluster up: head + $WORKERS worker nodes; Jobs API http://127.0.0.1:$DASH; Ray address 127.0.0.1:$PORT"
    ;;
  stop)
    pkill -TERM -f -- "$TMP" 2>/dev/null || true
    for _ in $(seq 1 20); do pgrep -f -- "$TMP" >/dev/null || break; sleep 0.5; done
    pkill -KILL -f -- "$TMP" 2>/dev/null || true
    echo "cluster on port $PORT stopped"
    ;;
  *) echo "usage: local_cluster.sh start|stop [options]" >&2; exit 2 ;;
esac
