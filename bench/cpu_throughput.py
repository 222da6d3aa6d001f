"""Training-step throughput (tokens/s) of presets: on the CPU, or on the GPU when one is present.

Runs the real training step (`pgolf.train.loop.run_training_step`: gradient accumulation, Muon + Adam,
the same loader) over a temporary shard of random tokens, after untimed warm-up steps (which also
trigger compilation when COMPILE=1). Prints one JSON line per preset.

    python bench/cpu_throughput.py                          # tiny_cpu and baseline_sp1024, few steps
    python bench/cpu_throughput.py --presets baseline_sp1024 --steps 20 --warmup 5 COMPILE=1

Tokens/s counts global tokens per optimizer step (TRAIN_BATCH_TOKENS) over the timed steps, the same
definition as the challenge logs (steps x batch / train time).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgolf.commands.configuration import resolve_config  # noqa: E402
from pgolf.data.loader import DistributedTokenLoader  # noqa: E402
from pgolf.data.shards import write_shard  # noqa: E402
from pgolf.dist import init_distributed  # noqa: E402
from pgolf.model.gpt import build_model, count_parameters  # noqa: E402
from pgolf.optim.build import build_optimizers  # noqa: E402
from pgolf.provenance import environment_summary  # noqa: E402
from pgolf.train.wrap import wrap_for_training  # noqa: E402
from pgolf.train.loop import TrainingParts, run_training_step  # noqa: E402


def measure_preset(name: str, overrides: list[str], steps: int, warmup: int, shard_dir: Path) -> dict:
    cfg, _, _ = resolve_config(name, overrides, environ={})
    ctx = init_distributed(cfg.run.pgolf_device).with_precision(cfg.train.autocast_dtype)
    torch.manual_seed(0)
    tokens_needed = (steps + warmup + 1) * cfg.train.train_batch_tokens + 8
    shard = shard_dir / f"fineweb_train_{name}.bin"
    if not shard.exists():
        rng = np.random.default_rng(0)
        write_shard(shard, rng.integers(0, cfg.model.vocab_size, size=min(tokens_needed, 50_000_000)))
    model = build_model(cfg.model, ctx.runtime)
    optimizers = build_optimizers(model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings,
                                  control_patterns=cfg.model.control_tensor_name_patterns)
    loader = DistributedTokenLoader([shard], ctx.rank, ctx.world_size, ctx.device)
    parts = TrainingParts(model, wrap_for_training(model, cfg.model, cfg.train.compile, ctx), optimizers, loader)
    for _ in range(warmup):
        run_training_step(parts, cfg.train, cfg.optim, ctx, lr_mult=1.0, muon_momentum=0.95)
    ctx.runtime.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = run_training_step(parts, cfg.train, cfg.optim, ctx, lr_mult=1.0, muon_momentum=0.95)
    ctx.runtime.synchronize()
    seconds = time.perf_counter() - start
    return {
        "preset": name, "overrides": overrides, "device": environment_summary(ctx.device).get("gpu", str(ctx.device)),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "model_params": count_parameters(model),
        "train_batch_tokens": cfg.train.train_batch_tokens, "grad_accum_steps": ctx.grad_accum_steps,
        "compile": cfg.train.compile, "steps": steps, "seconds": round(seconds, 3),
        "step_ms": round(1000 * seconds / steps, 2),
        "tokens_per_second": round(steps * cfg.train.train_batch_tokens / seconds),
        "final_loss": round(loss.item(), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny_cpu,baseline_sp1024")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("overrides", nargs="*", metavar="KEY=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            print(json.dumps(measure_preset(name, args.overrides, args.steps, args.warmup, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
