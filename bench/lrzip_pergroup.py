"""Bytes and time of COMPRESSOR=pergroup_lrzip (TOP's lrzip ZPAQ role streams) against pgolf's own pergroup.

Both lay the container out the same way (role streams, row chains, transposition: one split, timed once)
and compress the residual container with brotli-11 after a stride-2 shuffle; they differ only in the role
streams: the smallest of zlib-9, lzma-9e, brotli-11 and zstd-22 (``pergroup``) or ``lrzip -z -L 9``
(``pergroup_lrzip``). For each role stream it prints the raw bytes, both results and both times; then the
totals (with plain brotli-11 stride 2 as the single-stream reference) and the decompression times, after
checking that both artifacts decompress to the very container bytes.

    python bench/lrzip_pergroup.py                   # a record-shaped state (TOP's shapes, random weights)
    python bench/lrzip_pergroup.py --trained         # a small model trained here (tiny_cpu, MLP 5x), ~4 min
    python bench/lrzip_pergroup.py --run runs/<id>   # the final weights of an existing run

The record-shaped state has TOP's matrix shapes (11 layers of width 512, MLP 4x, vocabulary 8192) with
random weights and log-normal row scales, quantized with TOP's bits and clips by round to nearest (int6
SDClip: MLP k = 11.5, attention k = 13, others 12.85; int7 embedding k = 14): the size and timing of the
real thing, but random codes have no structure for ZPAQ's context models to find, so its bytes are a
floor for what lrzip gains. The trained model is small but has real weights. Needs the ``lrzip`` program.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # quant_gap.record_shaped_state

from pgolf.artifact.compress import (COMPRESSION_FRAME_MAGIC, COMPRESSOR_IDS, choose_smallest_compression,  # noqa: E402
                                     compress_model_bytes, decompress_model_bytes, lrzip_available, run_lrzip)
from pgolf.artifact.container import pack_tensor_container, unpack_tensor_container  # noqa: E402
from pgolf.artifact.pergroup import pack_pergroup_streams, split_container_by_role, unpack_pergroup_streams  # noqa: E402
from pgolf.config import QuantConfig  # noqa: E402
from pgolf.quant.artifact_quant import quantize_for_artifact  # noqa: E402
from quant_gap import record_shaped_state  # noqa: E402

STRIDE = 2
# TOP's bits and clips (SPEC 5.1, 5.12), by round to nearest (no Hessians for random weights).
TOP_QUANT = QuantConfig(matrix_bits=6, clip_method="sdclip", matrix_clip_sigmas=12.85, mlp_clip_sigmas=11.5,
                        attn_clip_sigmas=13.0, embed_bits=7, embed_clip_sigmas=14.0, int8_keep_float_fp32_name_patterns=())
TRAIN_SETTINGS = ["MLP_MULT=5", "TRAIN_BATCH_TOKENS=8192", "MAX_WALLCLOCK_SECONDS=0", "VAL_LOSS_EVERY=0"]


def trained_state(iterations: int) -> tuple[dict[str, torch.Tensor], str]:
    from pgolf.commands.configuration import fill_default_data, resolve_config
    from pgolf.run import main as run_main

    cfg, _, name = resolve_config("tiny_cpu", TRAIN_SETTINGS + [f"ITERATIONS={iterations}"], environ={})
    started = time.perf_counter()
    report = run_main(fill_default_data(cfg), preset_name=name, echo=False)
    print(f"trained {report['run_dir']}: {report['steps']} steps in {time.perf_counter() - started:.0f}s")
    return run_state(Path(report["run_dir"])), f"tiny_cpu MLP 5x, {report['steps']} steps ({report['run_dir']})"


def run_state(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors, _ = unpack_tensor_container((run_dir / "final_weights.pgtc").read_bytes())
    return {name: tensor.float() for name, tensor in tensors.items()}


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def measure(container: bytes) -> dict:
    streams, split_s = timed(split_container_by_role, container)
    _, residual_meta = unpack_tensor_container(streams[0])
    roles = [group["role"] for group in residual_meta["pergroup"]["groups"]]
    residual, residual_s = timed(compress_model_bytes, streams[0], "brotli", STRIDE)
    rows, own_frames, lrzip_frames = [], [], []
    for role, stream in zip(roles, streams[1:]):
        (own, own_name, _), own_s = timed(choose_smallest_compression, stream, strides=(0,))
        lrz, lrz_s = timed(run_lrzip, stream, decompress=False)
        own_frames.append(own)
        lrzip_frames.append(lrz)
        rows.append({"role": role, "raw": len(stream), "own": len(own), "own_name": own_name, "own_s": own_s,
                     "lrzip": len(lrz), "lrzip_s": lrz_s})
        print(f"  {role}: {len(stream):,} raw -> {own_name} {len(own):,} ({own_s:.1f}s), lrzip {len(lrz):,} "
              f"({lrz_s:.1f}s)", flush=True)
    header = {name: COMPRESSION_FRAME_MAGIC + bytes([COMPRESSOR_IDS[name], STRIDE]) for name in ("pergroup", "pergroup_lrzip")}
    blobs = {"pergroup": header["pergroup"] + pack_pergroup_streams([residual] + own_frames),
             "pergroup_lrzip": header["pergroup_lrzip"] + pack_pergroup_streams([residual] + lrzip_frames)}
    plain, plain_s = timed(compress_model_bytes, container, "brotli", STRIDE)
    totals = {"brotli": {"bytes": len(plain), "compress_s": plain_s}}
    common_s = split_s + residual_s
    for name, blob in blobs.items():
        restored, decompress_s = timed(decompress_model_bytes, blob)
        assert restored == container, f"{name} did not round-trip"
        assert len(unpack_pergroup_streams(blob[5:])) == len(streams)
        streams_s = sum(row["lrzip_s" if name == "pergroup_lrzip" else "own_s"] for row in rows)
        totals[name] = {"bytes": len(blob), "compress_s": common_s + streams_s, "decompress_s": decompress_s}
    _, plain_decompress_s = timed(decompress_model_bytes, plain)
    totals["brotli"]["decompress_s"] = plain_decompress_s
    return {"container_bytes": len(container), "split_s": split_s, "residual_bytes": len(residual),
            "residual_s": residual_s, "rows": rows, "totals": totals}


def machine_line() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    lrzip = subprocess.run(["lrzip", "-V"], capture_output=True, text=True)
    return (f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"{(lrzip.stdout or lrzip.stderr).strip()}; date {time.strftime('%Y-%m-%d')}; working tree on top of {commit}")


def print_markdown(label: str, result: dict) -> None:
    print(f"\n{label}: container {result['container_bytes']:,} bytes; split (row chains) {result['split_s']:.1f}s; "
          f"residual brotli-11 stride 2: {result['residual_bytes']:,} bytes ({result['residual_s']:.1f}s)\n")
    print("| role stream | raw bytes | pergroup: best own | time | pergroup_lrzip: lrzip -z -L 9 | time | lrzip vs own |")
    print("|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        change = (row["lrzip"] - row["own"]) / row["own"] * 100
        print(f"| {row['role']} | {row['raw']:,} | {row['own']:,} ({row['own_name']}) | {row['own_s']:.1f} s | "
              f"{row['lrzip']:,} | {row['lrzip_s']:.1f} s | {change:+.2f}% |")
    print("\n| COMPRESSOR (stride 2) | bytes | compress | decompress |")
    print("|---|---|---|---|")
    for name, total in result["totals"].items():
        print(f"| {name} | {total['bytes']:,} | {total['compress_s']:.1f} s | {total['decompress_s']:.1f} s |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trained", action="store_true", help="train a small model here and use its weights")
    parser.add_argument("--iterations", type=int, default=150, help="--trained: training steps (default 150)")
    parser.add_argument("--run", type=Path, help="use RUN_DIR/final_weights.pgtc")
    args = parser.parse_args()
    if not lrzip_available():
        print("the lrzip program is not installed (Debian/Ubuntu: apt-get install lrzip)", file=sys.stderr)
        return 2
    if args.run is not None:
        state, label = run_state(args.run), f"weights of {args.run}"
    elif args.trained:
        state, label = trained_state(args.iterations)
    else:
        state, label = record_shaped_state(), "record-shaped state (TOP's shapes, random weights)"
    tensors, meta = quantize_for_artifact(state, TOP_QUANT)
    container = pack_tensor_container(tensors, {"quant": meta})
    result = measure(container)
    print_markdown(label, result)
    print(machine_line())
    print(json.dumps({"label": label, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
