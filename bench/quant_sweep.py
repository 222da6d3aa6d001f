"""Rate-distortion of the quantization schemes on a small model trained on this machine.

Trains a tiny_cpu run (or reuses one with --run), with its MLP widened to 5x so the MLP matrices
(640 x 128) are above the 65,536-weight passthrough limit and really get quantized, and with GPTQ int6
in the run itself (so the run also reports calibration time against its wall-clock cap). Then runs
`pgolf quantize RUN_DIR --sweep`: every scheme of pgolf.commands.quantize.SWEEP_SCHEMES, scored once by a
round trip, compressed with every available compressor (pergroup included), and drawn as sweep.png.
Prints the table and a Markdown version for docs/BENCHMARKS.md with the machine, date and commit.

    python bench/quant_sweep.py                      # train 150 steps of 8,192 tokens, then sweep
    python bench/quant_sweep.py --seconds 120        # train against a wall clock instead (GPTQ reserve 5 s)
    python bench/quant_sweep.py --run runs/<run_id>  # sweep an existing run

A fixed step count (the default) makes the table independent of how busy the machine is; a wall clock
also shows the calibration time against the cap.
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

from pgolf.commands.configuration import fill_default_data, resolve_config  # noqa: E402
from pgolf.commands.quantize import sweep_run  # noqa: E402
from pgolf.export.bundle import exported_code_bytes  # noqa: E402
from pgolf.run import main as run_main  # noqa: E402

RUN_SETTINGS = ["MLP_MULT=5", "QUANT_METHOD=gptq", "MATRIX_BITS=6", "CLIP_METHOD=sdclip", "TRAIN_BATCH_TOKENS=8192"]


def train_run(iterations: int, seconds: float, extra: list[str]) -> Path:
    budget = ([f"MAX_WALLCLOCK_SECONDS={seconds}", "GPTQ_RESERVE_SECONDS=5", "ITERATIONS=100000"] if seconds > 0 else
              ["MAX_WALLCLOCK_SECONDS=0", f"ITERATIONS={iterations}"])
    cfg, preset, name = resolve_config("tiny_cpu", RUN_SETTINGS + budget + extra, environ={})
    cfg = fill_default_data(cfg)
    report = run_main(cfg, preset_name=name, preset_cfg=preset, echo=False, code_bytes=exported_code_bytes(cfg, preset_name=name))
    print(f"trained {report['run_dir']}: {report['steps']} steps, train {report['train_seconds']:.1f}s + GPTQ "
          f"calibration {report['calibration_seconds']:.1f}s (cap {report['wallclock_cap_seconds']:g}s, 0 = none); "
          f"val_bpb {report['val_bpb_prequant']:.4f} -> {report['val_bpb']:.4f} round trip, "
          f"{report['total_bytes']:,} bytes")
    return Path(report["run_dir"])


def markdown_table(result: dict) -> list[str]:
    rows = result["rows"]
    compressors = result["compressors"]
    lines = ["| scheme | round-trip val_bpb | gap | " + " | ".join(f"{c} bytes" for c in compressors) + " |",
             "|---|---|---|" + "---|" * len(compressors)]
    for scheme in dict.fromkeys(row["scheme"] for row in rows):
        mine = {row["compressor"]: row for row in rows if row["scheme"] == scheme}
        first = mine[compressors[0]]
        smallest = min(row["model_bytes"] for row in mine.values())
        sizes = [f"**{mine[c]['model_bytes']:,}**" if mine[c]["model_bytes"] == smallest else f"{mine[c]['model_bytes']:,}"
                 for c in compressors]
        lines.append(f"| {scheme} | {first['val_bpb']:.4f} | {first['quant_gap_bpb']:+.4f} | " + " | ".join(sizes) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="sweep this existing run instead of training one")
    parser.add_argument("--iterations", type=int, default=150, help="training steps of the new run (default 150)")
    parser.add_argument("--seconds", type=float, default=0.0, help="train against this wall clock instead of --iterations")
    parser.add_argument("overrides", nargs="*", metavar="KEY=value", help="extra settings of the new run")
    args = parser.parse_args()
    run_dir = Path(args.run) if args.run else train_run(args.iterations, args.seconds, args.overrides)
    start = time.perf_counter()
    result = sweep_run(run_dir, {}, echo=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\nsweep took {time.perf_counter() - start:.0f}s; val_bpb_prequant {result['val_bpb_prequant']:.4f}; "
          f"code bytes {result['code_bytes']:,}")
    print(f"machine: {platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"date {time.strftime('%Y-%m-%d')}; commit {commit}\n")
    print("\n".join(markdown_table(result)))
    print("\n" + json.dumps({"run_dir": str(run_dir), "output_dir": result["output_dir"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
