"""``pgolf profile``: a few real training steps under the PyTorch profiler.

The model, optimizers and loader are built exactly as ``pgolf train`` builds them (``pgolf.run``
helpers; compiled when COMPILE=1), then:

1. warm-up steps (untimed; they compile when COMPILE=1);
2. ``--steps`` steps under ``torch.profiler`` (CPU, plus CUDA when present): a Chrome trace
   (``chrome://tracing`` or https://ui.perfetto.dev) is written into the output folder under a new name,
   and the ops/kernels with the most self time are listed. Forward and data loading carry
   ``record_function``/NVTX ranges (``pgolf::forward``, ``pgolf::data``); optimizer steps show as
   ``Optimizer.step#<class>.step``;
3. ``--steps`` more steps timed phase by phase (the device is synchronised at each phase boundary, so
   these are wall-clock shares, not overlapped kernel time): data, forward, optimizer, and backward
   (with the rest of the step: zero_grad, clipping, LR updates).

The training step itself is ``pgolf.train.loop.run_training_step``, untouched: the phases are seen
through a wrapper around the forward, a proxy around the loader and the optimizers' step hooks.
"""

import argparse
import json
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from pgolf.commands.configuration import fill_default_data, resolve_config
from pgolf.config import Config
from pgolf.data.shards import find_shards
from pgolf.dist import DistContext, init_distributed
from pgolf.errors import ConfigError
from pgolf.fsutil import require_writable_directory
from pgolf.model.gpt import GPT, build_model
from pgolf.model.layers import CastedLinear
from pgolf.optim.build import build_optimizers
from pgolf.data.run_data import build_train_loader
from pgolf.runtime import Runtime, seed_everything
from pgolf.train.instrument import nvtx_range
from pgolf.train.loop import TrainingParts, run_training_step
from pgolf.train.memory import check_training_fits_memory
from pgolf.train.wrap import uses_sharded_muon, wrap_for_training

TOP_OPS = 15
PHASES = ("data", "forward", "backward", "optimizer")
# Chrome-trace categories of device work (kernels, copies, fills).
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def training_flops_per_token(model: GPT, seq_len: int, *, looping: bool = False) -> int:
    """Training FLOPs per token: 3 x forward (backward = 2 x forward), where forward =

        2 * N_visits + 2 * d * (T + 1) * L_visits

    ``N_visits``: weights of every block linear times the number of times its block runs in the layer
    schedule (depth recurrence runs some twice or more), plus the output head (V x d); the embedding
    lookup is free. Attention: for each of ``L_visits`` block runs, q.k and attn.v cost ``2 d`` FLOPs
    per attended key; a causal row attends on average (T + 1) / 2 keys. Document isolation lets FA3
    skip work across documents; this counts the dense causal work. Small gates and norms are left out.
    """
    schedule = model.schedules[looping]
    visits = Counter(schedule.virtual_layers)
    block_weights = [sum(m.weight.numel() for m in block.modules() if isinstance(m, CastedLinear))
                     for block in model.blocks]
    matmul_weights = sum(visits[i] * block_weights[i] for i in range(len(model.blocks)))
    matmul_weights += model.cfg.vocab_size * model.cfg.model_dim  # output head (tied or not)
    attention = 2 * model.cfg.model_dim * (seq_len + 1) * sum(visits.values())
    return 3 * (2 * matmul_weights + attention)


class PhaseTimer:
    """Wall-clock seconds per phase, with the device synchronised at each boundary."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def phase(self, name: str):
        self.runtime.synchronize()
        start = time.perf_counter()
        yield
        self.runtime.synchronize()
        self.seconds[name] += time.perf_counter() - start


class Instrumented:
    """Wraps the forward and the loader of a TrainingParts with ranges (and timing when a timer is set),
    and times optimizer steps through their step hooks."""

    def __init__(self, parts: TrainingParts):
        self.inner_forward, self.inner_loader = parts.forward_model, parts.loader
        self.timer: PhaseTimer | None = None  # None: ranges only (profiled steps); set: ranges and timing
        self._optimizer_start = 0.0
        for opt in parts.optimizers:
            opt.register_step_pre_hook(self._before_optimizer)
            opt.register_step_post_hook(self._after_optimizer)

    @contextmanager
    def _range(self, name: str):
        with record_function(f"pgolf::{name}"), nvtx_range(name):
            if self.timer is None:
                yield
            else:
                with self.timer.phase(name):
                    yield

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # the forward
        with self._range("forward"):
            return self.inner_forward(x, y)

    def next_batch(self, *args):
        with self._range("data"):
            return self.inner_loader.next_batch(*args)

    def reset(self) -> None:
        self.inner_loader.reset()

    def no_sync(self):  # DDP's context for the micro-steps that skip the gradient all-reduce
        return self.inner_forward.no_sync()

    def _before_optimizer(self, *_):
        if self.timer is not None:
            self.timer.runtime.synchronize()
            self._optimizer_start = time.perf_counter()

    def _after_optimizer(self, *_):
        if self.timer is not None:
            self.timer.runtime.synchronize()
            self.timer.seconds["optimizer"] += time.perf_counter() - self._optimizer_start


def build_training_parts(cfg: Config, ctx: DistContext) -> TrainingParts:
    """Model, optimizers and loader as ``pgolf train`` builds them (before any QAT or checkpointing)."""
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, ctx.runtime)
    optimizers = build_optimizers(model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings,
                                  control_patterns=cfg.model.control_tensor_name_patterns,
                                  rank=ctx.rank, world_size=ctx.world_size)
    loader = build_train_loader(cfg.train.train_loader, cfg.model.vocab_size, ctx,
                                find_shards(cfg.data.data_path, "train"))
    scaler = ctx.runtime.loss_scaler()
    sharded = uses_sharded_muon(optimizers)
    return TrainingParts(model, wrap_for_training(model, cfg.model, cfg.train.compile, ctx, sharded_muon=sharded), optimizers, loader,
                         loss_scaler=scaler, sharded_gradients=sharded)


def new_trace_path(out_dir: Path, rank: int = 0) -> Path:
    """A trace file name in ``out_dir`` that does not exist yet (profiles are never overwritten)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"trace_{time.strftime('%Y%m%d_%H%M%S')}" + (f"_rank{rank}" if rank else "")
    path, n = out_dir / f"{stem}.json", 1
    while path.exists():
        path, n = out_dir / f"{stem}_{n}.json", n + 1
    return path


def cpu_self_times(events: list[dict]) -> dict[int, float]:
    """Self time (microseconds) of nested CPU events of one thread: duration minus direct children's."""
    self_us, stack = {}, []  # stack of (end time, event index) of the open ancestors
    for index in sorted(range(len(events)), key=lambda i: (events[i]["ts"], -events[i]["dur"])):
        event = events[index]
        while stack and stack[-1][0] <= event["ts"]:
            stack.pop()
        if stack:
            self_us[stack[-1][1]] -= event["dur"]
        self_us[index] = event["dur"]
        stack.append((event["ts"] + event["dur"], index))
    return self_us


def top_ops(trace_events: list[dict], on_cuda: bool, limit: int = TOP_OPS) -> list[dict]:
    """The GPU kernels (CUDA) or CPU ops with the most self time, from a Chrome trace's events.

    Read from the exported trace rather than ``prof.key_averages()``, which takes seconds per ten
    thousand events."""
    spans = [e for e in trace_events if e.get("ph") == "X" and "dur" in e]
    totals: dict[str, list[float]] = {}
    if on_cuda:
        ranked = [(e["name"], e["dur"]) for e in spans if e.get("cat") in GPU_CATEGORIES]
    else:
        ranked = []
        for tid in {e.get("tid") for e in spans}:
            thread = [e for e in spans if e.get("tid") == tid and e.get("cat") in ("cpu_op", "user_annotation")]
            ranked += [(thread[i]["name"], us) for i, us in cpu_self_times(thread).items()
                       if thread[i]["cat"] == "cpu_op"]
    for name, us in ranked:
        entry = totals.setdefault(name, [0, 0.0])
        entry[0], entry[1] = entry[0] + 1, entry[1] + us
    grand_total = sum(us for _, us in totals.values()) or 1.0
    best = sorted(totals.items(), key=lambda item: item[1][1], reverse=True)[:limit]
    return [{"name": name, "calls": calls, "self_ms": round(us / 1000, 3), "share": round(us / grand_total, 4)}
            for name, (calls, us) in best if us > 0]


def run_steps(parts: TrainingParts, cfg: Config, ctx: DistContext, steps: int) -> None:
    for _ in range(steps):
        run_training_step(parts, cfg.train, cfg.optim, ctx, lr_mult=1.0, muon_momentum=cfg.optim.muon_momentum)


def profile_training(cfg: Config, *, steps: int, warmup: int, out_dir: Path) -> dict:
    """Warm up, profile ``steps`` steps into a Chrome trace, then time ``steps`` steps by phase."""
    ctx = init_distributed(cfg.run.pgolf_device).with_precision(cfg.train.autocast_dtype)
    check_training_fits_memory(cfg, ctx.device)  # before the model is allocated
    parts = build_training_parts(cfg, ctx)
    instrumented = Instrumented(parts)
    parts.forward_model, parts.loader = instrumented, instrumented
    run_steps(parts, cfg, ctx, warmup)
    on_cuda = ctx.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        run_steps(parts, cfg, ctx, steps)
        ctx.runtime.synchronize()
    trace = new_trace_path(out_dir, ctx.rank)
    prof.export_chrome_trace(str(trace))
    instrumented.timer = PhaseTimer(ctx.runtime)
    start = time.perf_counter()
    run_steps(parts, cfg, ctx, steps)
    step_seconds = (time.perf_counter() - start) / steps
    return summarize_profile(cfg, ctx, parts, trace, instrumented.timer, step_seconds, steps)


def summarize_profile(cfg, ctx, parts, trace, timer, step_seconds, steps) -> dict:
    """The JSON result: trace path, top ops, per-step phase breakdown, throughput and FLOPs."""
    per_step = {name: seconds / steps for name, seconds in timer.seconds.items()}
    per_step["backward"] = max(step_seconds - sum(per_step.values()), 0.0)  # the remainder of the step
    flops = training_flops_per_token(parts.model, cfg.train.train_seq_len, looping=bool(parts.model.looping))
    tokens_per_second = cfg.train.train_batch_tokens / step_seconds
    return {
        "device": str(ctx.device), "train_batch_tokens": cfg.train.train_batch_tokens,
        "grad_accum_steps": ctx.grad_accum_steps, "compile": cfg.train.compile, "steps": steps,
        "trace": str(trace), "top_ops": top_ops(json.loads(trace.read_text())["traceEvents"], ctx.device.type == "cuda"),
        "step_ms": round(step_seconds * 1000, 3),
        "phases_ms": {name: round(per_step[name] * 1000, 3) for name in PHASES},
        "tokens_per_second": round(tokens_per_second, 1), "flops_per_token": flops,
        "achieved_tflops": round(flops * tokens_per_second / 1e12, 6),
    }


def format_profile(result: dict) -> str:
    """Human-readable summary."""
    lines = [f"pgolf profile: {result['steps']} steps on {result['device']} (compile={result['compile']}, "
             f"grad_accum={result['grad_accum_steps']})",
             f"  trace: {result['trace']}", "  top ops by self time:"]
    for op in result["top_ops"]:
        lines.append(f"    {op['self_ms']:>10.3f} ms  {op['share']:>6.1%}  x{op['calls']:<5} {op['name']}")
    lines.append(f"  step {result['step_ms']:.1f} ms: " + ", ".join(
        f"{name} {ms:.1f} ms" for name, ms in result["phases_ms"].items()) + " (backward includes the step's rest)")
    lines.append(f"  {result['tokens_per_second']:.0f} tokens/s, {result['flops_per_token']:,} FLOPs/token, "
                 f"{result['achieved_tflops']:.3f} TFLOP/s achieved")
    return "\n".join(lines)


def check_profile_arguments(steps: int, warmup: int) -> None:
    if steps < 1:
        raise ConfigError(f"--steps {steps}: profile at least 1 step (default 5).")
    if warmup < 0:
        raise ConfigError(f"--warmup {warmup}: give 0 or more untimed steps (default 2).")


def run_profile_command(args: argparse.Namespace) -> int:
    """Handler of ``pgolf profile``."""
    warmup = getattr(args, "warmup", 2)
    check_profile_arguments(args.steps, warmup)
    cfg, _, _ = resolve_config(args.preset, args.overrides)
    require_writable_directory(args.output, "the profiler trace")  # before any step runs
    cfg = fill_default_data(cfg)
    result = profile_training(cfg, steps=args.steps, warmup=warmup, out_dir=Path(args.output))
    print(json.dumps(result, indent=2) if args.json else format_profile(result))
    return 0
