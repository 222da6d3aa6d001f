#!/usr/bin/env bash
# Run HERE (CPU) before the device call: builds what bench/gpu_session.sh needs into ignored folders that
# the `run` tool carries (the device machine cannot reach the network or ../shared/data):
#   .devcache/tokenizers/        the official sp1024 and the sp8192 tokenizers
#   .devcache/fineweb_sp1024/    sp1024 val head (262,145 tokens) as val, val tail (2.0 M) as train
#   .devcache/sp8192/datasets/fineweb_sp8192/   `pgolf data build` of the FineWeb text sample with the
#                                sp8192 tokenizer: 200 validation docs (~153 k tokens), 1,656 training docs
#   .whl/                        wheels the device image lacks: brotli, zstandard, python-minifier (cp312)
# Idempotent: what exists is kept. About 12 MiB in all (checked below against the 64 MiB carry limit).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${PGOLF_SHARED_DATA:-../shared/data}
DEV=.devcache
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=$PWD
mkdir -p $DEV/tokenizers $DEV/fineweb_sp1024
cp -u "$SHARED"/parameter-golf-tokenizers/fineweb_{1024,8192}_bpe.model $DEV/tokenizers/
cp -u "$SHARED"/fineweb-sp1024-val-sample/fineweb_val_head_262145tok.bin $DEV/fineweb_sp1024/fineweb_val_000000.bin
cp -u "$SHARED"/fineweb-sp1024-val-sample/fineweb_val_tail_2021846tok.bin $DEV/fineweb_sp1024/fineweb_train_000000.bin
if [ ! -f $DEV/sp8192/datasets/fineweb_sp8192/manifest.json ]; then
  rm -rf $DEV/sp8192  # a half-built export is never reused
  python3 -m pgolf data build --docs "$SHARED"/fineweb-text-sample/fineweb_val_sample_decoded.jsonl \
    --vocab-size 8192 --tokenizer $DEV/tokenizers/fineweb_8192_bpe.model --num-val-docs 200 \
    --out $DEV/sp8192 --name fineweb --workers 1
fi
# The device image has torch, numpy, sentencepiece, but not these (pgolf train imports python_minifier,
# the record presets compress with brotli). --no-deps: none of the three has requirements.
if [ -z "${GPU_PREPARE_NO_WHEELS:-}" ] && ! ls .whl/python_minifier-*.whl >/dev/null 2>&1; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl brotli==1.2.1 zstandard==0.25.0 python-minifier==3.4.0
fi
for p in $DEV .whl; do git check-ignore -q "$p" || { echo "error: $p is not ignored by git" >&2; exit 1; }; done
total=$(du -sm $DEV .whl 2>/dev/null | awk '{s += $1} END {print s}')
du -sh $DEV/* .whl 2>/dev/null
echo "carried data: ${total} MiB (the limit is 64 MiB with the working tree)"
[ "$total" -lt 48 ] || { echo "error: too large to carry" >&2; exit 1; }
# The device copy may lack .git: the commit the numbers come from, and how many tracked paths differ.
printf '{"commit": "%s", "changed_paths": %s}\n' "$(git rev-parse --short HEAD)" \
  "$(git status --porcelain --untracked-files=no | wc -l)" > $DEV/commit.txt
