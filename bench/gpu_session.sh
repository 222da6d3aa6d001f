#!/usr/bin/env bash
# One GPU session's measurements for issue 19, in order of value, inside a time budget: correctness
# (gpu_parity.py), throughput (gpu_throughput.py), a short real pipeline (pgolf train), each section
# started only if its estimate fits and killed at its own timeout. See bench/gpu_session.py for the
# sections and bench/README.md for the preparation (bench/gpu_prepare.sh, here) and the device call.
#   GPU_SESSION_BUDGET_S   seconds for all sections (default 480: one 600 s call leaves room)
#   GPU_SESSION_SECTIONS   comma-separated subset (default all), e.g. pipeline for a second call
#   GPU_SESSION_DRY_RUN=1  the same sections on this CPU with tiny shapes (plumbing check)
#   OUT                    output folder (default /tmp/pgolf-gpu-out); at most 8 files, as the tool returns
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pgolf-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if [ -n "${GPU_SESSION_DRY_RUN:-}" ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
elif ls .whl/*.whl >/dev/null 2>&1; then
  # Packages the device image lacks (brotli, zstandard, python-minifier), carried as wheels.
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pgolf-site \
    .whl/*.whl 2>&1 | tail -3
  export PYTHONPATH=/tmp/pgolf-site:$PWD
fi
[ -f .devcache/sp8192/datasets/fineweb_sp8192/manifest.json ] || echo "warning: no .devcache data; run bench/gpu_prepare.sh here first and carry .devcache" >&2
exec python3 bench/gpu_session.py --out "$OUT" "$@"
