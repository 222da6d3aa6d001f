"""The training loop: a plain function over a model, its optimizers and a loader.

Schedules are pure functions of progress (elapsed / budget, or step / iterations without a wall-clock
cap), so warmdown, the depth-recurrence switch and the other progress-driven events fire at the same
fraction of the run on any hardware. The budget is the wall-clock cap less the GPTQ reserve. Compile
priming (of every graph variant the run will use) runs before the clock and is undone afterwards.
Validation during training is off the clock. Every rank stops at the same step: the over-budget flag
is agreed with an all-reduce (together with Ctrl-C and the checkpoint timer), and so are the looping
and QAT switches. With EMA_DECAY > 0 the model
leaves training holding the EMA weights. Checkpoints (``pgolf.train.checkpoint``) are written off the
clock; a resumed run restores everything, clock included, before its first step.

Graph variants: the timed run passes through up to three (looping, QAT) states, in the order of their
switch fractions; priming runs each of them for ``warmup_steps`` so no switch compiles on the clock.
"""

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from pgolf.config import OptimConfig, TrainConfig
from pgolf.dist import DistContext, all_ranks_agree_any, all_reduce_sum_
from pgolf.errors import TrainingError
from pgolf.log import ProgressBar, RunLogger
from pgolf.optim.build import apply_lr_and_momentum
from pgolf.optim.grad_sync import clip_grad_norm_synchronized_, synchronize_gradients
from pgolf.optim.schedules import lr_multiplier_at, muon_momentum_at, muon_wd_multiplier_at, training_progress
from pgolf.runtime import NoLossScaling
from pgolf.train.checkpoint import CheckpointManager, TrainingPosition
from pgolf.train.checkpoint_state import InterruptRequest, TrainingInterrupted, ranks_agree_any_of
from pgolf.train.clock import TrainingClock, effective_training_budget
from pgolf.train.ema import WeightEMA
from pgolf.train.instrument import CompileMonitor, nvtx_range


@dataclass(frozen=True)
class TrainOutcome:
    steps: int
    train_seconds: float
    tokens_seen: int
    last_train_loss: float
    stopped_by: str  # "wallclock" or "iterations"
    looping_enabled_step: int | None = None  # step at which depth recurrence switched on, if it did
    ema_applied: bool = False
    qat_enabled_step: int | None = None  # step at which fake quantization switched on, if it did

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / max(self.train_seconds, 1e-9)


class FakeQuantSwitch(Protocol):
    """What the loop needs from quantization-aware training (``pgolf.quant.qat.QATController``): a
    progress fraction at which to switch fake quantization on, and the switch. The loop knows nothing
    else of QAT."""

    start_frac: float
    enabled: bool

    def set_enabled(self, enabled: bool) -> None: ...


class TrainingBatches(Protocol):
    """What the loop needs from a training loader (``DistributedTokenLoader``, ``ShuffledSequenceLoader``)."""

    def next_batch(self, global_tokens: int, seq_len: int,
                   grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def reset(self) -> None: ...

    # Checkpoints only: the position as JSON values, and back. (Not state_dict: the exporter keeps a
    # method whenever kept code calls one of its name, and model/optimizer state_dict calls are everywhere.)
    def position_state(self) -> dict: ...

    def restore_position(self, state: dict) -> None: ...


@dataclass
class TrainingParts:
    """What one optimizer step needs. ``forward_model`` may be compiled and/or DDP-wrapped.

    ``model`` may offer depth recurrence: a ``supports_looping`` property, a ``looping`` attribute and
    ``set_looping(enabled)``; models without them simply never loop. ``qat`` is the controller of the
    model's fake-quant modules (``pgolf.quant.qat.attach_qat``), or None for no QAT. ``loss_scaler``
    scales fp16 losses (``pgolf.runtime.Runtime.loss_scaler``); the default does nothing.
    """

    model: torch.nn.Module
    forward_model: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]
    loader: TrainingBatches
    qat: FakeQuantSwitch | None = None
    loss_scaler: object = field(default_factory=NoLossScaling)
    # Sharded Muon (MUON_SHARDED=1, several ranks): no DDP; the optimizers average the gradients.
    sharded_gradients: bool = False


def run_training_step(parts: TrainingParts, cfg: TrainConfig, optim_cfg: OptimConfig, ctx: DistContext,
                      *, lr_mult: float, muon_momentum: float, muon_wd_mult: float | None = None) -> torch.Tensor:
    """One optimizer step over ``grad_accum_steps`` micro-batches; returns the mean micro-batch loss.
    ``muon_wd_mult`` scales Muon's weight decay (the taper); None leaves it at ``MUON_WD``."""
    accum, scaler = ctx.grad_accum_steps, parts.loss_scaler
    for opt in parts.optimizers:
        opt.zero_grad(set_to_none=True)
    total_loss = torch.zeros((), device=ctx.device)
    for micro in range(accum):
        with nvtx_range("data"):
            x, y = parts.loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, accum)
        # DDP all-reduces gradients only on the last micro-step; earlier ones accumulate locally.
        is_last = micro == accum - 1
        ddp = ctx.is_distributed and not parts.sharded_gradients
        sync_context = parts.forward_model.no_sync() if ddp and not is_last else nullcontext()
        with sync_context:
            with nvtx_range("forward"), ctx.runtime.autocast():
                loss = parts.forward_model(x, y)
            with nvtx_range("backward"):
                scaler.scale(loss / accum).backward()
        total_loss += loss.detach().float()
    with nvtx_range("optimizer"):
        if parts.sharded_gradients and ctx.is_distributed:
            synchronize_gradients(parts.optimizers)  # reduce-scatter Muon shards, one flat all-reduce for the rest
        apply_lr_and_momentum(parts.optimizers, lr_mult=lr_mult, muon_momentum=muon_momentum, muon_wd_mult=muon_wd_mult)
        if scaler.is_enabled():  # fp16: true gradients before clipping; inf/NaN steps are skipped
            for opt in parts.optimizers:
                scaler.unscale_(opt)
        if optim_cfg.grad_clip_norm > 0:
            # One global norm over every parameter of the model (all groups together), as in SPEC 2.7/4.6.
            clip_all_gradients_(parts, optim_cfg.grad_clip_norm)
        for opt in parts.optimizers:
            scaler.step(opt)
        scaler.update()
    return total_loss / accum


def clip_all_gradients_(parts: TrainingParts, max_norm: float) -> None:
    if parts.sharded_gradients:  # each rank holds only its shard of the Muon gradients
        clip_grad_norm_synchronized_(parts.optimizers, max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), max_norm)


def _momentum_for(step: int, optim_cfg: OptimConfig) -> float:
    return muon_momentum_at(step, start=optim_cfg.muon_momentum_warmup_start, end=optim_cfg.muon_momentum,
                            warmup_steps=optim_cfg.muon_momentum_warmup_steps)


def _muon_wd_mult_for(progress: float, optim_cfg: OptimConfig) -> float | None:
    if not optim_cfg.muon_wd_taper:
        return None
    return muon_wd_multiplier_at(progress, start=optim_cfg.muon_wd_taper_start, final=optim_cfg.muon_wd_taper_final)


def model_supports_looping(model: torch.nn.Module) -> bool:
    """True if ``model`` has a depth-recurrence switch that is configured on (NUM_LOOPS > 0)."""
    return bool(getattr(model, "supports_looping", False))


def _priming_steps(parts: TrainingParts, cfg: TrainConfig, optim_cfg: OptimConfig, ctx: DistContext,
                   logger: RunLogger, label: str) -> None:
    for step in range(cfg.warmup_steps):
        run_training_step(parts, cfg, optim_cfg, ctx, lr_mult=1.0, muon_momentum=_momentum_for(0, optim_cfg))
        logger.line(f"{label}{step + 1}/{cfg.warmup_steps}")


def _qat_active(parts: TrainingParts) -> bool:
    """True if the model has fake-quant modules the loop can switch on."""
    return parts.qat is not None


def _graph_state(parts: TrainingParts) -> dict[str, bool]:
    """Which graph the next forward runs: depth recurrence and fake quantization on or off."""
    looping = model_supports_looping(parts.model) and bool(parts.model.looping)
    return {"looping": looping, "qat": _qat_active(parts) and parts.qat.enabled}


def _set_graph_state(parts: TrainingParts, state: dict[str, bool]) -> None:
    current = _graph_state(parts)
    if state["looping"] != current["looping"]:
        parts.model.set_looping(state["looping"])
    if state["qat"] != current["qat"]:
        parts.qat.set_enabled(state["qat"])


def _later_graph_states(parts: TrainingParts, cfg: TrainConfig, initial: dict[str, bool]) -> list[dict[str, bool]]:
    """The states the timed run switches into after ``initial``, in switch order (equal fractions merge)."""
    switches = []
    if model_supports_looping(parts.model):
        switches.append((cfg.enable_looping_at, "looping"))
    if _qat_active(parts):
        switches.append((parts.qat.start_frac, "qat"))
    state, states = dict(initial), []
    for frac in sorted({at for at, _ in switches}):
        state = dict(state, **{name: True for at, name in switches if at == frac})
        if state != initial and state not in states:
            states.append(state)
    return states


def prime_compiled_graphs(parts: TrainingParts, cfg: TrainConfig, optim_cfg: OptimConfig, ctx: DistContext,
                          logger: RunLogger) -> None:
    """Run ``warmup_steps`` real steps to trigger compilation, then restore the initial state exactly.

    Every graph variant the run will use is primed (SPEC 4.8): ``warmup_steps`` in the initial state
    (looping and QAT off), then as many in each state the switches lead to, in switch order (looping
    on; QAT on; both), so no mid-run switch compiles on the clock. Afterwards the switches are back
    in their initial state and model weights, optimizer state and the loader position all go back to
    where they were, so the timed run starts from the same state as an unprimed one.
    """
    if cfg.warmup_steps <= 0:
        return
    model_state = copy.deepcopy(parts.model.state_dict())
    optimizer_states = [copy.deepcopy(opt.state_dict()) for opt in parts.optimizers]
    initial = _graph_state(parts)
    _priming_steps(parts, cfg, optim_cfg, ctx, logger, "warmup_step:")
    for state in _later_graph_states(parts, cfg, initial):
        _set_graph_state(parts, state)
        label = "_".join(short for name, short in (("looping", "loop"), ("qat", "qat")) if state[name])
        logger.line(f"{label}_warmup:enabled steps:{cfg.warmup_steps}")
        _priming_steps(parts, cfg, optim_cfg, ctx, logger, f"{label}_warmup_step: ")
    _set_graph_state(parts, initial)
    parts.model.load_state_dict(model_state)
    for opt, state in zip(parts.optimizers, optimizer_states):
        opt.load_state_dict(state)
    parts.loader.reset()


def switch_on_looping_if_due(parts: TrainingParts, cfg: TrainConfig, ctx: DistContext, logger: RunLogger,
                             *, progress: float, step: int) -> bool:
    """Turn depth recurrence on, once and for good, when progress reaches ``enable_looping_at``.

    Returns True on the step it switches. Progress comes from each rank's own clock, so the decision is
    agreed across ranks (any rank due = all switch), keeping every rank on the same graph.
    """
    model = parts.model
    if not model_supports_looping(model) or model.looping:
        return False
    if not all_ranks_agree_any(progress >= cfg.enable_looping_at, ctx.device):
        return False
    model.set_looping(True)
    logger.line(f"layer_loop:enabled step:{step} frac:{progress:.3f}")
    logger.event("layer_loop", step=step, progress=progress)
    return True


def switch_on_qat_if_due(parts: TrainingParts, ctx: DistContext, logger: RunLogger, *, progress: float,
                         step: int) -> bool:
    """Turn fake quantization on, once and for good, when progress reaches ``parts.qat.start_frac``.

    Returns True on the step it switches. Agreed across ranks like the looping switch.
    """
    if not _qat_active(parts) or parts.qat.enabled:
        return False
    if not all_ranks_agree_any(progress >= parts.qat.start_frac, ctx.device):
        return False
    parts.qat.set_enabled(True)
    logger.line(f"qat:enabled step:{step} frac:{progress:.3f}")
    logger.event("qat", step=step, progress=progress)
    return True


def _log_compilations(monitor: CompileMonitor, logger: RunLogger, step: int) -> None:
    """Report a recompile, new graph or graph break seen after priming (each one stalls the clock)."""
    for event in monitor.poll():
        logger.line(event.log_line(step))
        logger.event("compile", step=step, kind=event.kind, reason=event.reason)


def _should_log(step: int, cfg: TrainConfig) -> bool:
    return step <= 10 or (cfg.train_log_every > 0 and step % cfg.train_log_every == 0)


def _mean_loss_or_raise(loss: torch.Tensor, ctx: DistContext, clock: TrainingClock, logger: RunLogger,
                        position: TrainingPosition, checkpoints: CheckpointManager | None) -> float:
    """The mean over all ranks: the log shows the global loss, and a non-finite loss stops every rank
    (with the step and the last finite loss in the log; the last good checkpoint stays)."""
    loss_value = all_reduce_sum_(loss.detach().clone()).item() / ctx.world_size
    if not math.isfinite(loss_value):
        clock.pause()
        logger.line(f"stopping:non_finite_loss step:{position.step} last_finite_loss:{position.last_finite_loss:.4f}")
        raise TrainingError(non_finite_loss_message(loss_value, position, checkpoints))
    return loss_value


def non_finite_loss_message(loss_value: float, position: TrainingPosition, checkpoints: CheckpointManager | None) -> str:
    """Worded apart from the check, so that `pgolf export` can move the words out of the counted script."""
    kept = f" {checkpoints.describe_last()}" if checkpoints is not None else ""
    return (f"training loss became {loss_value} at step {position.step} (last finite loss "
            f"{position.last_finite_loss:.4f}). Lower the learning rates (MATRIX_LR, SCALAR_LR, TIED_EMBED_LR) "
            f"or set GRAD_CLIP_NORM; the log so far is kept in the run directory.{kept}")


def _start_budget(cfg: TrainConfig, logger: RunLogger) -> float:
    """The effective training budget in seconds (0 = none), logged when a GPTQ reserve shortens it."""
    budget = effective_training_budget(cfg.max_wallclock_seconds, cfg.gptq_reserve_seconds)
    if budget > 0 and cfg.gptq_reserve_seconds > 0:
        logger.line(f"gptq:reserving {cfg.gptq_reserve_seconds:g}s, effective={budget * 1000:.0f}ms")
    return budget


def _starting_position(parts: TrainingParts, ema: WeightEMA | None,
                       checkpoints: CheckpointManager | None) -> TrainingPosition:
    """Step 0, or everything restored from the checkpoint the run resumes from (switches included)."""
    if checkpoints is None or checkpoints.resume_from is None:
        return TrainingPosition(graph_state=_graph_state(parts))
    position = checkpoints.restore(parts.model, parts.optimizers, parts.loader, ema)
    _set_graph_state(parts, position.graph_state)
    return position


def _log_step(logger: RunLogger, cfg: TrainConfig, position: TrainingPosition, elapsed: float,
              lr_mult: float) -> None:
    if _should_log(position.step, cfg):
        loss = position.last_finite_loss
        logger.line(f"step:{position.step}/{cfg.iterations} train_loss:{loss:.4f} "
                    f"train_time:{elapsed * 1000:.0f}ms step_avg:{elapsed * 1000 / position.step:.2f}ms")
        logger.event("train", step=position.step, train_loss=loss, train_seconds=elapsed, lr_mult=lr_mult)


def _agree_and_checkpoint(parts: TrainingParts, cfg: TrainConfig, ctx: DistContext, clock: TrainingClock,
                          ema: WeightEMA | None, position: TrainingPosition, checkpoints: CheckpointManager | None,
                          interrupt: InterruptRequest | None) -> tuple[bool, bool]:
    """Agree across ranks (one collective) on the stop flags and the seconds trigger, then write a
    checkpoint, off the clock, when one is due or Ctrl-C asked for it. Returns (over_budget, interrupted)."""
    if checkpoints is None:  # Ctrl-C and the seconds trigger come with checkpoints: only the budget to agree on
        return all_ranks_agree_any(clock.over_budget, ctx.device), False
    time_due = checkpoints.time_due(clock.elapsed_seconds)
    interrupt_requested = interrupt is not None and interrupt.requested
    over_budget, interrupted, time_due = ranks_agree_any_of([clock.over_budget, interrupt_requested, time_due],
                                                            ctx.device)
    more_to_come = not over_budget and position.step < cfg.iterations
    if interrupted or (more_to_come and (time_due or checkpoints.step_due(position.step))):
        clock.pause()
        position.train_seconds, position.graph_state = clock.elapsed_seconds, _graph_state(parts)
        checkpoints.save(parts.model, parts.optimizers, parts.loader, ema, position)
        clock.resume()
    return over_budget, interrupted


def _stop_for_interrupt(logger: RunLogger, position: TrainingPosition, checkpoints: CheckpointManager) -> None:
    run_dir = checkpoints.root.parent
    written = f"checkpoint written: {checkpoints.last_saved}" if checkpoints.last_saved else "no checkpoint written"
    message = (f"interrupted (Ctrl-C) after step {position.step}; {written}. "
               f"Continue with: pgolf train --resume {run_dir}")
    logger.line(f"interrupted:step:{position.step} checkpoint:{checkpoints.last_saved}")
    raise TrainingInterrupted(message)


def train_model(parts: TrainingParts, cfg: TrainConfig, optim_cfg: OptimConfig, ctx: DistContext,
                logger: RunLogger, validate: Callable[[int], None] | None = None,
                checkpoints: CheckpointManager | None = None, *, diagnostics: bool = True) -> TrainOutcome:
    """Train until ``ITERATIONS`` or the effective wall-clock budget, whichever comes first.

    With ``checkpoints``, training continues from its ``resume_from`` checkpoint when it has one,
    writes checkpoints when they are due, and turns Ctrl-C into a checkpoint and ``TrainingInterrupted``.
    ``diagnostics``: log what compiles after priming (a lean exported script leaves the monitor out).
    """
    prime_compiled_graphs(parts, cfg, optim_cfg, ctx, logger)
    budget = _start_budget(cfg, logger)
    # Built from the restored initial weights, after priming, before the clock starts.
    ema = WeightEMA(parts.model, cfg.ema_decay, cfg.ema_start_step) if cfg.ema_decay > 0 else None
    position = _starting_position(parts, ema, checkpoints)
    clock = TrainingClock(ctx.runtime, budget, already_elapsed=position.train_seconds)
    bar = ProgressBar("train", budget if budget > 0 else cfg.iterations, enabled=ctx.is_main)
    stopped_by = "iterations"
    # Priming compiled every graph the run needs: anything compiled from here on costs budget time.
    monitor = CompileMonitor() if cfg.compile and diagnostics else None
    with (InterruptRequest() if checkpoints is not None else nullcontext()) as interrupt:
        clock.resume()
        while position.step < cfg.iterations:
            if validate is not None and cfg.val_loss_every > 0 and position.step % cfg.val_loss_every == 0:
                clock.pause()
                validate(position.step)
                clock.resume()
            progress = training_progress(elapsed_seconds=clock.elapsed_seconds, budget_seconds=budget,
                                         step=position.step, iterations=cfg.iterations)
            if switch_on_looping_if_due(parts, cfg, ctx, logger, progress=progress, step=position.step):
                position.looping_step = position.step
            if switch_on_qat_if_due(parts, ctx, logger, progress=progress, step=position.step):
                position.qat_step = position.step
            lr_mult = lr_multiplier_at(progress, warmdown_frac=cfg.warmdown_frac, min_lr=cfg.min_lr)
            loss = run_training_step(parts, cfg, optim_cfg, ctx, lr_mult=lr_mult,
                                     muon_momentum=_momentum_for(position.step, optim_cfg),
                                     muon_wd_mult=_muon_wd_mult_for(progress, optim_cfg))
            position.step += 1
            if ema is not None:
                ema.update(parts.model, position.step)
            position.last_finite_loss = _mean_loss_or_raise(loss, ctx, clock, logger, position, checkpoints)
            _log_step(logger, cfg, position, clock.elapsed_seconds, lr_mult)
            if monitor is not None:
                _log_compilations(monitor, logger, position.step)
            bar.update(clock.elapsed_seconds if budget > 0 else position.step,
                       f"step {position.step} loss {position.last_finite_loss:.3f}")
            over_budget, interrupted = _agree_and_checkpoint(parts, cfg, ctx, clock, ema, position, checkpoints,
                                                             interrupt)
            if checkpoints is not None and interrupted:  # only a run with checkpoints stops for Ctrl-C
                bar.close()
                _stop_for_interrupt(logger, position, checkpoints)
            if over_budget:
                stopped_by = "wallclock"
                break
    clock.pause()
    bar.close()
    if stopped_by == "wallclock":
        logger.line(f"stopping_early: wallclock_cap train_time:{clock.elapsed_seconds * 1000:.0f}ms "
                    f"step:{position.step}/{cfg.iterations}")
    if ema is not None:
        logger.line("ema:applying EMA weights")
        ema.apply_to(parts.model)
    return TrainOutcome(steps=position.step, train_seconds=clock.elapsed_seconds,
                        tokens_seen=position.step * cfg.train_batch_tokens, last_train_loss=position.last_finite_loss,
                        stopped_by=stopped_by, looping_enabled_step=position.looping_step,
                        ema_applied=ema is not None, qat_enabled_step=position.qat_step)
