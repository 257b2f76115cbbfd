#!/usr/bin/env bash
# The CUDA path end to end, on a machine with GPUs and the project installed (`make install VARIANT=cuda`):
#
#   benchmarks/gpu_smoke.sh [WORK]          # default WORK: /tmp/raytrain-gpu-smoke
#
# 1. the demo (jobs/train_ml100k.yaml), 2 epochs on CPU workers: the reference test AUC;
# 2. the same job with train.device=cuda (NCCL for GPU tensors, TorchRec's TrainPipelineSparseDist), a mid-epoch
#    checkpoint every 50 steps; rank 1's worker is killed after the first one, so Ray Train restarts the group and
#    the run resumes from that mid-epoch position (resumes.jsonl says from which step);
# 3. the CUDA run served on Ray Serve: one /predict over HTTP.
#
# Ends with GOAL lines: the CUDA run finished, resumed mid-epoch, its test AUC within 0.005 of the CPU run's, and the
# served model answered. DEVICE=cpu runs the same steps with CPU workers (a check of this script where no GPU is).
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/raytrain-gpu-smoke}
DEVICE=${DEVICE:-cuda}
PY=${PY:-.venv/bin/python}
RT="$PY -m raytrain.cli.main"
rm -rf "$WORK" && mkdir -p "$WORK"
newest() { ls -d "$1"/train-ml100k/*/ 2>/dev/null | tail -1; }
auc() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['test_auc'])" "$1/result.json" 2>/dev/null || echo nan; }

echo "== 1. reference: CPU workers"
$RT run jobs/train_ml100k.yaml train.epochs=2 "storage=$WORK/cpu" || echo "reference run failed"
cpu_auc=$(auc "$(newest "$WORK/cpu")")

echo "== 2. device $DEVICE, mid-epoch checkpoints, rank 1 killed after the first"
$RT run jobs/train_ml100k.yaml train.epochs=2 "train.device=$DEVICE" train.checkpoint.every_steps=50 \
  train.max_failures=1 train.checkpoint.keep=4 "storage=$WORK/gpu" &
runner=$!
killed=0
for _ in $(seq 1 600); do  # wait for the first mid-epoch checkpoint Ray Train registered, then kill rank 1
  run=$(newest "$WORK/gpu")
  if [ -n "$run" ] && grep -q mid_epoch_0001 "$run/ray/checkpoint_manager_snapshot.json" 2>/dev/null \
     && [ -f "$run/workers/rank1.pid" ]; then
    kill -9 "$(cat "$run/workers/rank1.pid")" && killed=1
    break
  fi
  kill -0 "$runner" 2>/dev/null || break
  sleep 0.5
done
wait "$runner"; rc=$?
run=$(newest "$WORK/gpu")
gpu_auc=$(auc "$run")
from_step=$("$PY" -c "import json,sys; print(max([json.loads(l)['from_step'] for l in open(sys.argv[1])] or [0]))" \
  "$run/resumes.jsonl" 2>/dev/null || echo 0)

echo "== 3. serve the $DEVICE run"
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$WORK/serve.yaml" <<EOF
name: gpu-smoke-serve
kind: serve
storage: $WORK/serve-runs
serve: {variants: {gpu: {run: "$run"}}, num_cpus: 0.25, host: 127.0.0.1, port: $port}
ray: {num_cpus: 8}
EOF
$RT serve "$WORK/serve.yaml" > "$WORK/serve.log" 2>&1 &
server=$!
status=0
for _ in $(seq 1 240); do
  if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
    status=$(curl -s -o "$WORK/predict.json" -w '%{http_code}' "http://127.0.0.1:$port/predict" \
      -H 'Content-Type: application/json' -d '{"rows": [{"user_id": 1, "item_id": 50}]}')
    break
  fi
  kill -0 "$server" 2>/dev/null || break
  sleep 1
done
kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null  # SIGTERM: a background job ignores SIGINT
cat "$WORK/predict.json" 2>/dev/null; echo

"$PY" - "$rc" "$killed" "$from_step" "$cpu_auc" "$gpu_auc" "$status" "$DEVICE" <<'EOF'
import math
import sys

rc, killed, from_step, cpu, gpu, status, device = sys.argv[1:]
cpu, gpu = float(cpu), float(gpu)
diff = abs(gpu - cpu) if not (math.isnan(cpu) or math.isnan(gpu)) else float("nan")
print(f"CPU test AUC {cpu:.4f}, {device} test AUC {gpu:.4f}; rank 1 killed: {killed}; resumed from step {from_step}")
goals = [(f"{device}_run_finishes", rc, "==0", rc == "0"),
         (f"{device}_resumed_mid_epoch_from_step", from_step, ">0", killed == "1" and int(from_step) > 0),
         (f"{device}_vs_cpu_test_auc_abs_diff", f"{diff:.4f}", "<=0.005", diff <= 0.005),
         (f"{device}_served_predict_status", status, "==200", status == "200")]
for name, measured, target, ok in goals:
    print(f"GOAL {name} {measured} {target} {'met' if ok else 'missed'}")
EOF
