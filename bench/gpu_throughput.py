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

Prints one JSON line per measurement (as it finishes; a failed one, e.g. out of memory, is a line with
"error" and the others still run) and a markdown row for docs/BENCHMARKS.md. Each line also holds the
seconds of the warm-up steps (compilation included) and the reference's tokens/s per GPU where known
(REFERENCE_TOKENS_PER_GPU: the logged 8xH100 runs). Needs a CUDA GPU; ``--device cpu`` (with shrinking
overrides and COMPILE=0) only smoke-tests the plumbing (bench/cpu_throughput.py measures the CPU).
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
# Tokens/s per GPU of the reference runs on 8xH100 (issue 19): the baseline's log, and the record's before
# and after its recurrence switch. One GPU with 8-way accumulation runs the same per-GPU micro-batches.
REFERENCE_TOKENS_PER_GPU = {("baseline_sp1024", False): 1_500_000, ("record_sp8192", False): 960_000,
                            ("record_sp8192", True): 650_000}
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
    ctx.runtime.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run_training_step(parts, cfg.train, cfg.optim, ctx, lr_mult=1.0, muon_momentum=cfg.optim.muon_momentum)
    ctx.runtime.synchronize()
    return time.perf_counter() - start


def reference_tokens_per_gpu(name: str, looping: bool) -> int | None:
    return REFERENCE_TOKENS_PER_GPU.get((name.removesuffix("_1gpu"), looping))


def peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


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
    warmup_seconds = timed_steps(parts, cfg, ctx, args.warmup)  # compiles
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed_steps(parts, cfg, ctx, args.steps)
    tokens_per_second = args.steps * cfg.train.train_batch_tokens / seconds
    flops = training_flops_per_token(model, cfg.train.train_seq_len, looping=looping)
    gpu = torch.cuda.get_device_name() if ctx.device.type == "cuda" else "cpu"
    datasheet = expected_figures(gpu)
    reference = reference_tokens_per_gpu(name, looping)
    achieved = flops * tokens_per_second / 1e12
    return {
        "preset": name, "overrides": overrides, "looping": looping, "gpu": gpu, "torch": torch.__version__,
        "attention": describe_attention_backend(cfg.model, ctx.device), "compile": cfg.train.compile,
        "model_params": count_parameters(model), "train_batch_tokens": cfg.train.train_batch_tokens,
        "train_seq_len": cfg.train.train_seq_len, "grad_accum_steps": ctx.grad_accum_steps, "steps": args.steps,
        "warmup_steps": args.warmup, "warmup_seconds": round(warmup_seconds, 1),
        "step_ms": round(1000 * seconds / args.steps, 2), "tokens_per_second": round(tokens_per_second),
        "reference_tokens_per_gpu": reference,
        "vs_reference": round(tokens_per_second / reference, 3) if reference else None,
        "peak_memory_gib": peak_memory_gib(ctx.device), "flops_per_token": flops,
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
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script (tiny overrides)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=value")
    return parser.parse_args(argv)


def looping_states(name: str, overrides: list[str], choice: str) -> list[bool]:
    cfg, _, _ = resolve_config(name, overrides, environ={})
    if cfg.model.num_loops == 0:
        return [False]
    return {"off": [False], "on": [True], "both": [False, True]}[choice]


def peak_matmul_tflops(device: torch.device) -> float:
    """The bf16 (fp16 before Ampere) matmul rate measured here; a small fp32 probe on the CPU."""
    if device.type != "cuda":
        return matmul_probe(device, torch.float32, 256, 5)
    dtype = torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16
    return matmul_probe(device, dtype, 8192, 50)


def measure_or_error(name: str, looping: bool, args, shard_dir: Path, peak: float) -> dict:
    """``measure``, or a record of why it failed (out of memory, a compile error) so the rest still run."""
    try:
        return measure(name, args.overrides, looping, args, shard_dir, peak)
    except Exception as error:  # noqa: BLE001 - a benchmark reports, it does not stop
        return {"preset": name, "looping": looping, "error": f"{type(error).__name__}: {str(error)[:500]}"}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu_throughput.py needs a CUDA GPU; for CPU numbers run bench/cpu_throughput.py.", file=sys.stderr)
        return 2
    if device.type != "cuda":  # every config resolves to this device, whatever CUDA would say
        args.overrides = [*args.overrides, f"PGOLF_DEVICE={args.device}"]
    peak = peak_matmul_tflops(device)
    commit, rows = git_commit(), []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            for looping in looping_states(name, args.overrides, args.looping):
                result = measure_or_error(name, looping, args, Path(tmp), peak)
                print(json.dumps({**result, "commit": commit}), flush=True)
                if "error" not in result:
                    rows.append(markdown_row(result, commit))
    print("\n" + MARKDOWN_HEADER + "\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
