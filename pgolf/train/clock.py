"""The training clock: counts only training time, pauses around validation, agreed across ranks."""

import time

import torch


def synchronize_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainingClock:
    """Accumulates training seconds; ``pause()``/``resume()`` bracket work that is off the clock.

    The device is synchronised at each pause so queued GPU work is charged to training, not to the
    validation that follows it.
    """

    def __init__(self, device: torch.device, budget_seconds: float):
        self.device = device
        self.budget_seconds = budget_seconds
        self._accumulated = 0.0
        self._started_at: float | None = None

    def resume(self) -> None:
        synchronize_device(self.device)
        self._started_at = time.perf_counter()

    def pause(self) -> None:
        synchronize_device(self.device)
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
