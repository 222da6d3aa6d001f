"""FP8 matmuls (FP8_MATMUL=1): accuracy and speed against the bf16 path, on a GPU with FP8 (sm_89+).

Two parts, both printed as JSON lines:

1. ``matmul``: for the block linear shapes of the baseline (d=512, MLP 2048) at training batch size,
   the relative error of the FP8 forward (``pgolf.model.layers.fp8_linear``: per-tensor amax scaling,
   e4m3 operands) and of the bf16 forward against an fp32 product, for Gaussian and heavy-tailed
   activations, and the forward / forward+backward times of both;
2. ``training``: the same preset trained twice from the same initial weights and batches, FP8 off and
   on (``enable_fp8_matmul`` before compile), for ``--steps`` optimizer steps: losses along the way,
   mean train loss over the last 10%, step time, and (with ``--val-shard``) the evaluation loss of both
   models on the same held-out tokens (evaluation never uses FP8).

    python bench/fp8_accuracy.py --train-shard DATA/fineweb_train_000000.bin --val-shard DATA/fineweb_val_000000.bin
    python bench/fp8_accuracy.py --parts matmul
    python bench/fp8_accuracy.py --preset baseline_sp1024 --steps 300 COMPILE=1 TRAIN_BATCH_TOKENS=131072

Without ``--train-shard`` the training part uses random tokens (speed only: the loss cannot fall).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgolf.commands.configuration import resolve_config  # noqa: E402
from pgolf.data.loader import DistributedTokenLoader  # noqa: E402
from pgolf.data.shards import read_shard, write_shard  # noqa: E402
from pgolf.dist import init_distributed  # noqa: E402
from pgolf.model.gpt import build_model  # noqa: E402
from pgolf.model.layers import enable_fp8_matmul, fp8_linear, fp8_unavailable_reason  # noqa: E402
from pgolf.optim.build import build_optimizers  # noqa: E402
from pgolf.runtime import Runtime, resolve_runtime  # noqa: E402
from pgolf.train.wrap import wrap_for_training  # noqa: E402
from pgolf.train.loop import TrainingParts, run_training_step  # noqa: E402

# (tokens, in, out): attention q/out-proj, MLP fc, MLP proj of the baseline at 16k tokens per micro-batch.
MATMUL_SHAPES = [(16384, 512, 512), (16384, 512, 2048), (16384, 2048, 512)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def gpu_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / repeats


def matmul_report(device: torch.device) -> list[dict]:
    rows = []
    gen = torch.Generator(device).manual_seed(0)
    for tokens, fan_in, fan_out in MATMUL_SHAPES:
        weight = torch.randn(fan_out, fan_in, device=device, generator=gen) / fan_in ** 0.5
        gaussian = torch.randn(tokens, fan_in, device=device, generator=gen)
        # Heavy tails: a few channels 30x larger, as residual streams develop; per-tensor scaling suffers.
        heavy = gaussian * torch.where(torch.rand(fan_in, device=device, generator=gen) < 0.01, 30.0, 1.0)
        for label, x in (("gaussian", gaussian), ("heavy_tailed", heavy)):
            exact = x @ weight.T
            x_bf16 = x.bfloat16()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out_fp8 = fp8_linear(x_bf16, weight)
                out_bf16 = F.linear(x_bf16, weight.bfloat16())
            rows.append({"part": "matmul", "shape": [tokens, fan_in, fan_out], "inputs": label,
                         "fp8_rel_err": relative_error(out_fp8, exact),
                         "bf16_rel_err": relative_error(out_bf16, exact)})
        rows[-1].update(matmul_timings(torch.randn(tokens, fan_in, device=device).bfloat16(), weight))
    return rows


def matmul_timings(x: torch.Tensor, weight: torch.Tensor) -> dict:
    def forward(fn):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return fn()

    def forward_backward(fn):
        w = weight.detach().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(w)
        out.float().sum().backward()

    return {"fp8_fwd_ms": gpu_ms(lambda: forward(lambda: fp8_linear(x, weight))),
            "bf16_fwd_ms": gpu_ms(lambda: forward(lambda: F.linear(x, weight.bfloat16()))),
            "fp8_fwd_bwd_ms": gpu_ms(lambda: forward_backward(lambda w: fp8_linear(x, w))),
            "bf16_fwd_bwd_ms": gpu_ms(lambda: forward_backward(lambda w: F.linear(x, w.to(x.dtype))))}


def train_once(cfg, ctx, shard: Path, steps: int, fp8: bool) -> tuple[dict, torch.nn.Module]:
    torch.manual_seed(0)  # same initial weights for both runs
    model = build_model(cfg.model, ctx.runtime)
    line = enable_fp8_matmul(model, ctx.device) if fp8 else "fp8_matmul:off"
    optimizers = build_optimizers(model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings,
                                  control_patterns=cfg.model.control_tensor_name_patterns)
    loader = DistributedTokenLoader([shard], ctx.rank, ctx.world_size, ctx.device)  # same batches
    parts = TrainingParts(model, wrap_for_training(model, cfg.model, cfg.train.compile, ctx), optimizers, loader)
    losses, start = [], None
    for step in range(steps):
        if step == min(5, steps - 1):  # time after compilation / warm-up
            ctx.runtime.synchronize()
            start, timed_from = time.perf_counter(), step
        loss = run_training_step(parts, cfg.train, cfg.optim, ctx, lr_mult=1.0, muon_momentum=cfg.optim.muon_momentum)
        losses.append(loss.item())
    ctx.runtime.synchronize()
    tail = losses[-max(1, steps // 10):]
    summary = {"part": "training", "fp8": fp8, "fp8_line": line, "steps": steps,
               "losses_every_10pct": [round(losses[i], 4) for i in range(0, steps, max(1, steps // 10))],
               "final_loss": round(losses[-1], 4), "mean_loss_last_10pct": round(sum(tail) / len(tail), 5),
               "step_ms": round(1000 * (time.perf_counter() - start) / (steps - timed_from), 2)}
    return summary, model


def bf16_runtime(device: torch.device) -> Runtime:
    """bf16 autocast on CUDA (what a run on an H100 uses), plain fp32 elsewhere."""
    return resolve_runtime(device, "bf16" if device.type == "cuda" else "auto")


@torch.no_grad()
def eval_loss(model: torch.nn.Module, val_tokens: torch.Tensor, seq_len: int, device: torch.device) -> float:
    model.eval()
    usable = (val_tokens.numel() - 1) // seq_len * seq_len
    x = val_tokens[:usable].view(-1, seq_len).to(device)
    y = val_tokens[1 : usable + 1].view(-1, seq_len).to(device)
    total = 0.0
    for i in range(0, x.size(0), 16):
        with bf16_runtime(device).autocast():
            total += model(x[i : i + 16], y[i : i + 16], reduction="sum").item()
    model.train()
    return total / usable


def training_report(args, tmp: Path) -> list[dict]:
    cfg, _, _ = resolve_config(args.preset, args.overrides, environ={})
    ctx = init_distributed(cfg.run.pgolf_device).with_precision(cfg.train.autocast_dtype)
    shard = Path(args.train_shard) if args.train_shard else tmp / "fineweb_train_random.bin"
    if not args.train_shard:
        rng = np.random.default_rng(0)
        write_shard(shard, rng.integers(0, cfg.model.vocab_size, size=(args.steps + 2) * cfg.train.train_batch_tokens))
    val = None
    if args.val_shard:
        val = torch.from_numpy(read_shard(args.val_shard)[: args.val_tokens + 1].astype("int64"))
    rows = []
    for fp8 in (False, True):
        summary, model = train_once(cfg, ctx, shard, args.steps, fp8)
        if val is not None:
            summary["val_loss"] = round(eval_loss(model, val, cfg.train.train_seq_len, ctx.device), 5)
        rows.append(summary)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="matmul,training", help="comma-separated subset of matmul, training")
    parser.add_argument("--preset", default="baseline_sp1024")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--train-shard", help="a FineWeb training shard (else random tokens: speed only)")
    parser.add_argument("--val-shard", help="a validation shard for the held-out loss of both models")
    parser.add_argument("--val-tokens", type=int, default=262_144)
    parser.add_argument("overrides", nargs="*", metavar="KEY=value")
    args = parser.parse_args()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    reason = fp8_unavailable_reason(device)
    print(json.dumps({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "torch": torch.__version__, "fp8_unavailable": reason}), flush=True)
    if reason is not None:
        return
    parts = set(args.parts.split(","))
    rows = matmul_report(device) if "matmul" in parts else []
    if "training" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            rows += training_report(args, Path(tmp))
    for row in rows:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
