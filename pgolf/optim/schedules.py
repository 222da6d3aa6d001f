"""Schedules as pure functions of the step or of training progress (SPEC 2.7, 4.7).

The learning rate follows *progress* = elapsed / budget (or step / iterations when there is no
wall-clock cap), so the warm-down happens over the same fraction of the run on any hardware. This
replaces the baseline's "WARMDOWN_ITERS steps' worth of time", which on slow hardware decays from the
first step. Muon's momentum warm-up stays a function of the step count, as in the baseline; the optional Muon
weight-decay taper is a function of progress like the LR.
"""

from pgolf.errors import ConfigError


def muon_momentum_at(step: int, *, start: float, end: float, warmup_steps: int) -> float:
    """Muon momentum at ``step``: linear from ``start`` (step 0) to ``end`` (step >= ``warmup_steps``).

    ``warmup_steps == 0`` means no warm-up: always ``end``.
    """
    if warmup_steps < 0:
        raise ConfigError(f"MUON_MOMENTUM_WARMUP_STEPS must be >= 0, got {warmup_steps}; use 0 for no warm-up.")
    if warmup_steps == 0:
        return end
    fraction = min(max(step, 0) / warmup_steps, 1.0)
    return (1.0 - fraction) * start + fraction * end


def lr_multiplier_at(progress: float, *, warmdown_frac: float, min_lr: float = 0.0) -> float:
    """Multiplier on every group's base LR at ``progress`` in [0, 1].

    1 until ``progress`` reaches ``1 - warmdown_frac``, then a straight line down to 0 at progress 1
    (floored at ``min_lr``, SPEC 5.9; 0 reproduces the baseline). ``warmdown_frac == 0``: always 1.
    There is no LR warm-up.
    """
    assert 0.0 <= warmdown_frac <= 1.0, warmdown_frac  # validate_config's rule (WARMDOWN_FRAC)
    if warmdown_frac == 0.0 or progress < 1.0 - warmdown_frac:
        return 1.0
    return max((1.0 - progress) / warmdown_frac, min_lr)


def muon_wd_multiplier_at(progress: float, *, start: float, final: float) -> float:
    """Multiplier on Muon's weight decay at ``progress`` (the taper of SPEC 5.12, record 1.0678).

    1 until ``progress`` reaches ``start``, then a straight line to ``final`` at progress 1 (0.70 and
    0.50 in the record). The decay stays decoupled and scaled by the scheduled LR, so the step applies
    ``p *= 1 - lr * MUON_WD * multiplier``.
    """
    assert 0.0 <= start < 1.0, start  # validate_config's rule (MUON_WD_TAPER_START)
    if progress <= start:
        return 1.0
    return 1.0 + (final - 1.0) * (min(progress, 1.0) - start) / (1.0 - start)


def training_progress(*, elapsed_seconds: float, budget_seconds: float, step: int, iterations: int) -> float:
    """Fraction of the run done, clamped to [0, 1].

    With a wall-clock budget (``budget_seconds > 0``) it is ``elapsed_seconds / budget_seconds``;
    without one it is ``step / iterations``.
    """
    if budget_seconds > 0:
        progress = elapsed_seconds / budget_seconds
    elif iterations > 0:
        progress = step / iterations
    else:
        raise ConfigError(
            "training has neither a wall-clock budget nor a step limit; set MAX_WALLCLOCK_SECONDS > 0 "
            "or ITERATIONS > 0."
        )
    return min(max(progress, 0.0), 1.0)
