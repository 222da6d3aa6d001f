#!/usr/bin/env bash
# One GPU session's measurements, in priority order (see docs/BENCHMARKS.md for results).
# Expects the FineWeb sp1024 sample in .devcache/ (copied from ../shared/data; see bench/README.md).
# Writes logs under $OUT (default /tmp/pgolf-gpu-out).
set -uo pipefail
OUT=${OUT:-/tmp/pgolf-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
DATA=.devcache/fineweb_sp1024
TOK=.devcache/tokenizers/fineweb_1024_bpe.model
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
  git rev-parse --short HEAD 2>/dev/null || true
} 2>&1 | tee "$OUT/env.txt"
echo "== doctor"; python3 -m pgolf doctor --json > "$OUT/doctor.json" 2>&1; tail -5 "$OUT/doctor.json"
echo "== parity"; python3 bench/gpu_parity.py --tokens $DATA/fineweb_val_000000.bin --tokenizer $TOK 2>&1 | tee "$OUT/parity.json"
echo "== throughput"
python3 bench/cpu_throughput.py --presets baseline_sp1024 --steps 20 --warmup 5 COMPILE=1 2>&1 | tee "$OUT/throughput.jsonl"
python3 bench/cpu_throughput.py --presets baseline_sp1024 --steps 10 --warmup 2 COMPILE=0 2>&1 | tee -a "$OUT/throughput.jsonl"
echo "== kernels (fused CE / MLP parity and speed) and GPU throughput with MFU"
python3 bench/gpu_parity.py --sections kernels 2>&1 | tee "$OUT/kernels.json"
python3 bench/gpu_throughput.py 2>&1 | tee "$OUT/gpu_throughput.txt"
python3 bench/fp8_accuracy.py --help >/dev/null 2>&1 && echo "(fp8: see bench/fp8_accuracy.py --help for its data arguments)"
python3 -m pgolf profile --preset baseline_sp1024 --steps 3 -o "$OUT/profile" DATA_PATH=$DATA TOKENIZER_PATH=$TOK 2>&1 | tail -30
echo "== smoke run of the full pipeline"
python3 -m pgolf train --preset baseline_sp1024 DATA_PATH=$DATA TOKENIZER_PATH=$TOK RUNS_DIR=/tmp/runs RUN_ID=gpu_smoke \
  MAX_WALLCLOCK_SECONDS=${SMOKE_SECONDS:-60} TRAIN_LOG_EVERY=50 VAL_LOSS_EVERY=0 2>&1 | tail -25
cp /tmp/runs/gpu_smoke/train.log "$OUT/smoke_train.log"; cp /tmp/runs/gpu_smoke/report.json "$OUT/smoke_report.json"
echo "== test suite on this machine's torch"
python3 -m pytest -q -x -p no:cacheprovider tests 2>&1 | tail -5
