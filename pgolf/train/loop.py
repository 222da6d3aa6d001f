"""The training loop: a plain function over a model, its optimizers and a loader.

Schedules are pure functions of progress (elapsed / budget, or step / iterations without a wall-clock
cap), so warmdown fires at the same fraction of the run on any hardware. Compile priming runs before the
clock and is undone afterwards. Validation during training is off the clock. Every rank stops at the
same step: the over-budget flag is agreed with a MAX all-reduce.
"""

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from pgolf.config import OptimConfig, TrainConfig
from pgolf.data.loader import DistributedTokenLoader
from pgolf.dist import DistContext, all_ranks_agree_any, all_reduce_sum_
from pgolf.errors import TrainingError
from pgolf.eval.bpb import autocast_context
from pgolf.log import ProgressBar, RunLogger
from pgolf.optim.build import apply_lr_and_momentum
from pgolf.optim.schedules import lr_multiplier_at, muon_momentum_at, training_progress
from pgolf.train.clock import TrainingClock


@dataclass(frozen=True)
class TrainOutcome:
    steps: int
    train_seconds: float
    tokens_seen: int
    last_train_loss: float
    stopped_by: str  # "wallclock" or "iterations"

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / max(self.train_seconds, 1e-9)


@dataclass
class TrainingParts:
    """What one optimizer step needs. ``forward_model`` may be compiled and/or DDP-wrapped."""

    model: torch.nn.Module
    forward_model: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]
    loader: DistributedTokenLoader


def run_training_step(parts: TrainingParts, cfg: TrainConfig, optim_cfg: OptimConfig, ctx: DistContext,
                      *, lr_mult: float, muon_momentum: float) -> torch.Tensor:
    """One optimizer step over ``grad_accum_steps`` micro-batches; returns the mean micro-batch loss."""
    accum = ctx.grad_accum_steps
    for opt in parts.optimizers:
        opt.zero_grad(set_to_none=True)
    total_loss = torch.zeros((), device=ctx.device)
    for micro in range(accum):
        x, y = parts.loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, accum)
        # DDP all-reduces gradients only on the last micro-step; earlier ones accumulate locally.
        is_last = micro == accum - 1
        sync_context = parts.forward_model.no_sync() if ctx.is_distributed and not is_last else nullcontext()
        with sync_context:
            with autocast_context(ctx.device):
                loss = parts.forward_model(x, y)
            (loss / accum).backward()
        total_loss += loss.detach().float()
    apply_lr_and_momentum(parts.optimizers, lr_mult=lr_mult, muon_momentum=muon_momentum)
    if optim_cfg.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), optim_cfg.grad_clip_norm)
    for opt in parts.optimizers:
        opt.step()
    return total_loss / accum


def _momentum_for(step: int, optim_cfg: OptimConfig) -> float:
    return muon_momentum_at(step, start=optim_cfg.muon_momentum_warmup_start, end=optim_cfg.muon_momentum,
                            warmup_steps=optim_cfg.muon_momentum_warmup_steps)


def prime_compiled_graphs(parts: TrainingParts, cfg: TrainConfig, optim_cfg: OptimConfig, ctx: DistContext,
                          logger: RunLogger) -> None:
    """Run ``warmup_steps`` real steps to trigger compilation, then restore the initial state exactly.

    Model weights, optimizer state and the loader position all go back to where they were, so the timed
    run starts from the same state as an unprimed one.
    """
    if cfg.warmup_steps <= 0:
        return
    model_state = copy.deepcopy(parts.model.state_dict())
    optimizer_states = [copy.deepcopy(opt.state_dict()) for opt in parts.optimizers]
    for step in range(cfg.warmup_steps):
        run_training_step(parts, cfg, optim_cfg, ctx, lr_mult=1.0, muon_momentum=_momentum_for(0, optim_cfg))
        logger.line(f"warmup_step:{step + 1}/{cfg.warmup_steps}")
    parts.model.load_state_dict(model_state)
    for opt, state in zip(parts.optimizers, optimizer_states):
        opt.load_state_dict(state)
    parts.loader.reset()


def _should_log(step: int, cfg: TrainConfig) -> bool:
    return step <= 10 or (cfg.train_log_every > 0 and step % cfg.train_log_every == 0)


def train_model(parts: TrainingParts, cfg: TrainConfig, optim_cfg: OptimConfig, ctx: DistContext,
                logger: RunLogger, validate: Callable[[int], None] | None = None) -> TrainOutcome:
    """Train until ``ITERATIONS`` or the wall-clock budget, whichever comes first."""
    prime_compiled_graphs(parts, cfg, optim_cfg, ctx, logger)
    clock = TrainingClock(ctx.device, cfg.max_wallclock_seconds)
    bar = ProgressBar("train", cfg.max_wallclock_seconds if cfg.max_wallclock_seconds > 0 else cfg.iterations,
                      enabled=ctx.is_main)
    step, last_finite_loss, stopped_by = 0, float("nan"), "iterations"
    clock.resume()
    while step < cfg.iterations:
        if validate is not None and cfg.val_loss_every > 0 and step % cfg.val_loss_every == 0:
            clock.pause()
            validate(step)
            clock.resume()
        progress = training_progress(elapsed_seconds=clock.elapsed_seconds, budget_seconds=cfg.max_wallclock_seconds,
                                     step=step, iterations=cfg.iterations)
        loss = run_training_step(parts, cfg, optim_cfg, ctx, lr_mult=lr_multiplier_at(progress, warmdown_frac=cfg.warmdown_frac),
                                 muon_momentum=_momentum_for(step, optim_cfg))
        step += 1
        # The mean over all ranks: the log shows the global loss, and a non-finite loss stops every rank.
        loss_value = all_reduce_sum_(loss.detach().clone()).item() / ctx.world_size
        if not math.isfinite(loss_value):
            clock.pause()
            raise TrainingError(
                f"training loss became {loss_value} at step {step} (last finite loss {last_finite_loss:.4f}). "
                "Lower the learning rates (MATRIX_LR, SCALAR_LR, TIED_EMBED_LR) or set GRAD_CLIP_NORM; "
                "the log so far is kept in the run directory."
            )
        last_finite_loss = loss_value
        elapsed = clock.elapsed_seconds
        if _should_log(step, cfg):
            logger.line(f"step:{step}/{cfg.iterations} train_loss:{loss_value:.4f} "
                        f"train_time:{elapsed * 1000:.0f}ms step_avg:{elapsed * 1000 / step:.2f}ms")
            logger.event("train", step=step, train_loss=loss_value, train_seconds=elapsed,
                         lr_mult=lr_multiplier_at(progress, warmdown_frac=cfg.warmdown_frac))
        bar.update(elapsed if cfg.max_wallclock_seconds > 0 else step, f"step {step} loss {loss_value:.3f}")
        if all_ranks_agree_any(clock.over_budget, ctx.device):
            stopped_by = "wallclock"
            break
    clock.pause()
    bar.close()
    if stopped_by == "wallclock":
        logger.line(f"stopping_early: wallclock_cap train_time:{clock.elapsed_seconds * 1000:.0f}ms step:{step}/{cfg.iterations}")
    tokens = step * cfg.train_batch_tokens
    return TrainOutcome(steps=step, train_seconds=clock.elapsed_seconds, tokens_seen=tokens,
                        last_train_loss=last_finite_loss, stopped_by=stopped_by)
