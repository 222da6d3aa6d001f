"""What sliding-window evaluation and score-first TTT gain on a tiny model trained on CPU; one JSON line.

    python bench/eval_gains.py                     # tiny_cpu, 100 steps, embedded default data
    python bench/eval_gains.py ITERATIONS=300      # any config override

Trains `tiny_cpu` for a fixed number of steps (no wall-clock cap, so the result does not depend on
the machine's load), then scores the int8 artifact three ways on the whole validation split: plain
windows of 256, sliding windows of 256 every 64 tokens, and score-first TTT on top of the sliding
windows. Prints the three BPB values, their differences and each phase's seconds.
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgolf.commands.configuration import fill_default_data, resolve_config  # noqa: E402
from pgolf.run import main as run_main  # noqa: E402

DEFAULTS = ["ITERATIONS=100", "MAX_WALLCLOCK_SECONDS=0", "SLIDING_WINDOW_ENABLED=1", "EVAL_STRIDE=64",
            "TTT_ENABLED=1", "TTT_CHUNK_TOKENS=8192", "TTT_LR=0.005", "TTT_EPOCHS=3", "RUN_ID=eval_gains"]


def main() -> None:
    with tempfile.TemporaryDirectory() as runs:
        cfg, preset, name = resolve_config("tiny_cpu", DEFAULTS + [f"RUNS_DIR={runs}"] + sys.argv[1:], environ={})
        report = run_main(fill_default_data(cfg), preset_name=name, preset_cfg=preset, echo=False)
    plain, sliding, ttt = (report["val_bpb"], report["val_bpb_quantized_sliding_window"],
                           report["val_bpb_quantized_ttt"])
    print(json.dumps({
        "bench": "eval_gains", "preset": name, "steps": report["steps"], "val_tokens": report["val_tokens"],
        "val_bpb_plain": round(plain, 5), "val_bpb_sliding": round(sliding, 5), "val_bpb_ttt": round(ttt, 5),
        "sliding_gain": round(plain - sliding, 5), "ttt_gain_over_sliding": round(sliding - ttt, 5),
        "eval_seconds": report["eval_budget"]["phases"], "overrides": DEFAULTS[:-1] + sys.argv[1:],
        "environment": report["env"],
    }))


if __name__ == "__main__":
    main()
