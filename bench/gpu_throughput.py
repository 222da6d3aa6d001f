"""GPU training throughput of presets: tokens/s, step time, peak memory, model FLOPs per token and MFU.

    python bench/gpu_throughput.py                                   # baseline_sp1024, record_sp8192_1gpu
    python bench/gpu_throughput.py --presets baseline_sp1024 --steps 20 --warmup 5 ATTENTION_BACKEND=sdpa
    python bench/gpu_throughput.py --presets record_sp8192_1gpu --looping on DOC_ISOLATED_ATTENTION=1

Runs the real training step (``pgolf.train.loop.run_training_step``: 8-way gradient accumulation on one
GPU, Muon + Adam, compiled when the preset says COMPILE=1) over a temporary shard of random tokens, after
untimed warm-up steps (which compile). Tokens/s counts the global tokens of an optimizer step
(TRAIN_BATCH_TOKENS) over the timed steps, as the challenge logs do.

Model FLOPs per token (``pgolf.commands.profile.training_flops_per_token``), training = 3 x forward:

    6 * N_visits + 6 * d * (T + 1) * L_visits

N_visits: block linear weights times the runs of their block (depth recurrence repeats some) plus the
output head V x d; L_visits: block runs; d: model width; T: sequence length (causal attention averages
(T + 1) / 2 keys per query, 2 d FLOPs each for q.k and for attn.v). MFU = FLOPs/token x tokens/s divided
by the peak: the bf16 matmul rate measured here with ``pgolf doctor``'s probe, and the datasheet figure.

Prints one JSON line per measurement and a markdown row for docs/BENCHMARKS.md. Needs a CUDA GPU
(bench/cpu_throughput.py measures the CPU).
"""

import argparse
import json
import subprocess
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
from pgolf.commands.doctor import expected_figures, matmul_probe  # noqa: E402
from pgolf.model.attention import describe_attention_backend  # noqa: E402
from pgolf.model.gpt import build_model, count_parameters  # noqa: E402
from pgolf.optim.build import build_optimizers  # noqa: E402
from pgolf.commands.profile import training_flops_per_token  # noqa: E402
from pgolf.train.wrap import wrap_for_training  # noqa: E402
from pgolf.train.loop import TrainingParts, run_training_step  # noqa: E402

DEFAULT_PRESETS = "baseline_sp1024,record_sp8192_1gpu"
MARKDOWN_HEADER = ("| date | commit | GPU | preset | looping | attention | tok/s | step ms | peak mem GiB | "
                   "FLOPs/token | TFLOP/s | MFU vs measured peak | MFU vs datasheet |\n"
                   "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def random_shard(shard_dir: Path, name: str, vocab_size: int, tokens: int) -> Path:
    shard = shard_dir / f"fineweb_train_{name}.bin"
    if not shard.exists():
        write_shard(shard, np.random.default_rng(0).integers(0, vocab_size, size=min(tokens, 50_000_000)))
    return shard


def timed_steps(parts: TrainingParts, cfg, ctx, steps: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run_training_step(parts, cfg.train, cfg.optim, ctx, lr_mult=1.0, muon_momentum=cfg.optim.muon_momentum)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, overrides: list[str], looping: bool, args, shard_dir: Path, peak_tflops: float) -> dict:
    """Throughput of preset ``name`` in one looping state."""
    cfg, _, _ = resolve_config(name, overrides, environ={})
    ctx = init_distributed(cfg.run.pgolf_device).with_precision(cfg.train.autocast_dtype)
    torch.manual_seed(0)
    needed = (args.steps + args.warmup + 1) * cfg.train.train_batch_tokens + 8
    loader = DistributedTokenLoader([random_shard(shard_dir, name, cfg.model.vocab_size, needed)], ctx.rank,
                                    ctx.world_size, ctx.device)
    model = build_model(cfg.model, ctx.runtime)
    model.set_looping(looping)
    optimizers = build_optimizers(model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings,
                                  control_patterns=cfg.model.control_tensor_name_patterns)
    parts = TrainingParts(model, wrap_for_training(model, cfg.model, cfg.train.compile, ctx), optimizers, loader)
    timed_steps(parts, cfg, ctx, args.warmup)  # compiles
    torch.cuda.reset_peak_memory_stats()
    seconds = timed_steps(parts, cfg, ctx, args.steps)
    tokens_per_second = args.steps * cfg.train.train_batch_tokens / seconds
    flops = training_flops_per_token(model, cfg.train.train_seq_len, looping=looping)
    gpu = torch.cuda.get_device_name()
    datasheet = expected_figures(gpu)
    achieved = flops * tokens_per_second / 1e12
    return {
        "preset": name, "overrides": overrides, "looping": looping, "gpu": gpu, "torch": torch.__version__,
        "attention": describe_attention_backend(cfg.model, ctx.device), "compile": cfg.train.compile,
        "model_params": count_parameters(model), "train_batch_tokens": cfg.train.train_batch_tokens,
        "train_seq_len": cfg.train.train_seq_len, "grad_accum_steps": ctx.grad_accum_steps, "steps": args.steps,
        "step_ms": round(1000 * seconds / args.steps, 2), "tokens_per_second": round(tokens_per_second),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "flops_per_token": flops,
        "achieved_tflops": round(achieved, 1), "measured_peak_tflops": round(peak_tflops, 1),
        "mfu_measured_peak": round(achieved / peak_tflops, 4),
        "mfu_datasheet": round(achieved / datasheet["matmul_tflops"], 4) if datasheet else None,
    }


def markdown_row(result: dict, commit: str) -> str:
    preset = " ".join([result["preset"], *result["overrides"]])
    datasheet = f"{result['mfu_datasheet']:.1%}" if result["mfu_datasheet"] is not None else "n/a"
    attention = result["attention"].split(" ")[0].removeprefix("attention_backend:")
    return (f"| {time.strftime('%Y-%m-%d')} | {commit} | {result['gpu']} | `{preset}` | {'on' if result['looping'] else 'off'} "
            f"| {attention} | {result['tokens_per_second']:,} | {result['step_ms']} | {result['peak_memory_gib']} "
            f"| {result['flops_per_token']:,} | {result['achieved_tflops']} | {result['mfu_measured_peak']:.1%} "
            f"(peak {result['measured_peak_tflops']}) | {datasheet} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=DEFAULT_PRESETS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--looping", choices=("off", "on", "both"), default="both",
                        help="depth-recurrence state(s) to measure, for presets that loop (default both)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=value")
    return parser.parse_args(argv)


def looping_states(name: str, overrides: list[str], choice: str) -> list[bool]:
    cfg, _, _ = resolve_config(name, overrides, environ={})
    if cfg.model.num_loops == 0:
        return [False]
    return {"off": [False], "on": [True], "both": [False, True]}[choice]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_throughput.py needs a CUDA GPU; for CPU numbers run bench/cpu_throughput.py.", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    peak = matmul_probe(device, torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16, 8192, 50)
    commit, rows = git_commit(), []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            for looping in looping_states(name, args.overrides, args.looping):
                result = measure(name, args.overrides, looping, args, Path(tmp), peak)
                print(json.dumps(result), flush=True)
                rows.append(markdown_row(result, commit))
                torch.cuda.empty_cache()
    print("\n" + MARKDOWN_HEADER + "\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
