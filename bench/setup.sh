#!/usr/bin/env bash
# Installs the benchmark's tools under bench/work/ (git-ignored), once; bench/run.py calls it.
# With --tools-only (make test's set-up: bench/test_bench.py drives perf_analyzer), only the first
# three below.
#  - perf_analyzer: the binary inside the tritonclient 2.50.0 wheel (pip download --no-deps)
#  - libcudart.so.12 for it: from the nvidia-cuda-runtime-cu12 wheel (no GPU needed)
#  - PyTriton, the peer, in its own venv (it needs numpy<2), with TensorFlow for the models,
#    and py-spy (profiles the server when a target is missed)
#  - Debian wrk and libb64-0d (the Makefile's system-deps installs them; installed here too
#    when missing and we are root)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
WORK="$HERE/work"
PIP="$ROOT/.venv/bin/pip"
PY="$ROOT/.venv/bin/python"
mkdir -p "$WORK/dl" "$WORK/lib" "$WORK/tritonclient"

unzip_member() {  # wheel member destination
  "$PY" - "$1" "$2" "$3" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
}

PA="$WORK/tritonclient/tritonclient-2.50.0.data/data/bin/perf_analyzer"
if [ ! -x "$PA" ]; then
  echo "bench setup: perf_analyzer (tritonclient==2.50.0 wheel)"
  "$PIP" download -q --no-deps "tritonclient==2.50.0" -d "$WORK/dl" 2>&1 | grep -v '^WARNING: Location' || true
  mkdir -p "$(dirname "$PA")"
  unzip_member "$(ls "$WORK"/dl/tritonclient-2.50.0-*.whl | head -1)" \
    tritonclient-2.50.0.data/data/bin/perf_analyzer "$PA"
  chmod +x "$PA"
fi

if [ ! -f "$WORK/lib/libcudart.so.12" ]; then
  echo "bench setup: libcudart.so.12 (nvidia-cuda-runtime-cu12 wheel)"
  "$PIP" download -q --no-deps "nvidia-cuda-runtime-cu12" -d "$WORK/dl" 2>&1 | grep -v '^WARNING: Location' || true
  unzip_member "$(ls "$WORK"/dl/nvidia_cuda_runtime_cu12-*.whl | head -1)" \
    nvidia/cuda_runtime/lib/libcudart.so.12 "$WORK/lib/libcudart.so.12"
fi

missing=""
command -v wrk >/dev/null || missing="$missing wrk"
dpkg -s libb64-0d >/dev/null 2>&1 || missing="$missing libb64-0d"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bench setup: Debian packages:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "bench setup: missing Debian packages:$missing (run 'make system-deps' as root)" >&2
    exit 1
  fi
fi

LD_LIBRARY_PATH="$WORK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PA" --version >/dev/null 2>&1 \
  || { echo "bench setup: perf_analyzer does not start (libb64.so.0d / libcudart.so.12?)" >&2; exit 1; }
[ "${1:-}" = "--tools-only" ] && { echo "bench setup: perf_analyzer ready"; exit 0; }

VP="$WORK/.venv-pytriton"
if [ ! -f "$VP/.installed" ]; then
  echo "bench setup: PyTriton venv (nvidia-pytriton 0.7.0, numpy<2, tensorflow, py-spy)"
  # The same base interpreter as the project's venv: PyTriton's Python backend loads its libpython.
  BASE="$("$PY" -c 'import sys; print(sys._base_executable)')"
  "$BASE" -m venv "$VP"
  "$VP/bin/pip" install -q "nvidia-pytriton==0.7.0" "numpy<2" "tensorflow==2.21.*" "py-spy" 2>&1 \
    | grep -v '^WARNING: Location' || true
  "$VP/bin/python" -c "import pytriton, tensorflow" 2>/dev/null
  touch "$VP/.installed"
fi

echo "bench setup: tools ready"
