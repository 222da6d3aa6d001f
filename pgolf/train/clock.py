"""The training clock: counts only training time, pauses around validation, agreed across ranks.

A resumed run starts its clock at the seconds the checkpoint recorded, so the budget and every
progress-driven schedule continue where they were.

The budget it runs against is ``MAX_WALLCLOCK_SECONDS - GPTQ_RESERVE_SECONDS`` (SPEC 4.7): GPTQ reads
training data for its Hessians, so that time is carved out of the training budget.
"""

import time

from pgolf.errors import ConfigError
from pgolf.runtime import Runtime


def effective_training_budget(max_wallclock_seconds: float, gptq_reserve_seconds: float) -> float:
    """Seconds of training: the wall-clock cap less the GPTQ reserve; 0 (no cap) stays 0.

    Schedules measure progress against this budget, so warm-down and the other progress-driven
    switches complete before the reserve starts.
    """
    if max_wallclock_seconds <= 0:
        return 0.0
    if not 0 <= gptq_reserve_seconds < max_wallclock_seconds:
        raise ConfigError(
            f"GPTQ_RESERVE_SECONDS={gptq_reserve_seconds} must be >= 0 and less than "
            f"MAX_WALLCLOCK_SECONDS={max_wallclock_seconds}; lower the reserve or raise the cap."
        )
    return max_wallclock_seconds - gptq_reserve_seconds


class TrainingClock:
    """Accumulates training seconds; ``pause()``/``resume()`` bracket work that is off the clock.

    The device is synchronised at each pause so queued GPU work is charged to training, not to the
    validation that follows it.
    """

    def __init__(self, runtime: Runtime, budget_seconds: float, *, already_elapsed: float = 0.0):
        """``already_elapsed``: training seconds spent before this process (a resumed run), counted
        against the budget like any other."""
        self.runtime = runtime
        self.budget_seconds = budget_seconds
        self._accumulated = float(already_elapsed)
        self._started_at: float | None = None

    def resume(self) -> None:
        self.runtime.synchronize()
        self._started_at = time.perf_counter()

    def pause(self) -> None:
        self.runtime.synchronize()
        if self._started_at is not None:
            self._accumulated += time.perf_counter() - self._started_at
            self._started_at = None

    @property
    def elapsed_seconds(self) -> float:
        running = 0.0 if self._started_at is None else time.perf_counter() - self._started_at
        return self._accumulated + running

    @property
    def over_budget(self) -> bool:
        return self.budget_seconds > 0 and self.elapsed_seconds >= self.budget_seconds
