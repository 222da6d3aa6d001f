"""The search of selective pruning: the fewest candidates to zero so the artifact fits the budget.

Sizes are functions of the count ``n`` of cheapest candidates zeroed; a real size (compress the whole
model) costs minutes with brotli-11 on a 16 MB model, so this module is about measuring few of them.

* :func:`bisect_fewest_fitting`: the plain binary search over ``n`` with real sizes, about
  ``log2(candidates) + 1`` measurements. It is the reference: the other search returns its result.
* :func:`estimated_fewest_fitting`: the same binary-search path, but a step whose *estimated* size
  (the codes' entropy, mapped onto real bytes through the measured counts around it) is clearly on
  one side of the budget is decided without measuring. Steps near the budget, where the real sizes jitter
  by a few bytes from one count to the next and only a measurement can say which way the plain
  search went, are measured, and so is the final pair. With ``workers`` > 1 a step that needs a
  measurement also measures, in parallel threads, the next steps the path will most likely need
  (:func:`predicted_path`), so a many-core machine waits for a few rounds instead of every step.

Compressed size falls with ``n`` only roughly (zeros compress better than +-1, but a compressor's
block choices jitter by bytes), so "the fewest that fit" is defined by the binary search's path: ``n``
fits, ``n - 1`` does not, both measured.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from pgolf.errors import ArtifactError
from pgolf.log import ProgressBar

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
PRUNE_SEARCH_EXPORT_SWITCH = "fit_to_cap"

# How far (bytes) an estimated size must be from the budget before the search trusts it without a real
# measurement: a fraction of its distance from the nearest measured size (the mapping is exact there
# and drifts away from it), plus a floor for the compressors' byte-level jitter (+-12 bytes for zlib-9
# on the 18 MB record-shaped model of bench/quant_gap.py --fit). Tuned on that model (cuts of 30, 100 and
# 300 KB): every result equal to the plain search's, 11-17 measurements instead of 24-25.
PRUNE_TRUST_BETWEEN = 0.35
PRUNE_TRUST_BEYOND = 0.5
PRUNE_TRUST_FLOOR_BYTES = 32


class SizeMemo:
    """Sizes by candidate count, each measured at most once; ``measured`` counts the measurements and
    ``rounds`` the waits for them (a batch measured in parallel is one round).

    ``workers`` > 1 lets :meth:`measure_many` measure several counts at once in threads (the real
    compressors release the GIL while they work)."""

    def __init__(self, measure: Callable[[int], int], known: dict[int, int] | None = None, workers: int = 1):
        self.measure = measure
        self.sizes = dict(known or {})
        self.measured = 0
        self.rounds = 0
        self.workers = max(int(workers), 1)
        # Each trial compresses the whole model (minutes at 16 MB with brotli-11): show that it moves.
        self.bar = ProgressBar("fit_to_cap search", None)

    def __call__(self, count: int) -> int:
        if count not in self.sizes:
            self.sizes[count] = self.measure(count)
            self.measured += 1
            self.rounds += 1
            self.bar.update(self.rounds, f"{self.measured} trial compressions, {self.rounds} rounds")
        return self.sizes[count]

    def measure_many(self, counts: list[int]) -> None:
        """Measure every count not known yet, in parallel when there are workers for it."""
        todo = list(dict.fromkeys(count for count in counts if count not in self.sizes))
        if len(todo) <= 1 or self.workers <= 1:
            for count in todo:
                self(count)
            return
        with ThreadPoolExecutor(max_workers=min(self.workers, len(todo))) as pool:
            for count, size in zip(todo, pool.map(self.measure, todo)):
                self.sizes[count] = size
        self.measured += len(todo)
        self.rounds += 1
        self.bar.update(self.rounds, f"{self.measured} trial compressions, {self.rounds} rounds")


def hopeless_pruning_error(size: int, size_all: int, total: int, budget_bytes: int) -> ArtifactError:
    """The error when even zeroing every candidate leaves the artifact over the budget."""
    return ArtifactError(
        f"artifact is {size:,} bytes against a budget of {budget_bytes:,}; even zeroing all {total:,} "
        f"+-1 codes leaves {size_all:,} bytes, {size_all - budget_bytes:,} bytes over. Use fewer bits "
        "(MATRIX_BITS/EMBED_BITS), larger clip sigmas, a stronger compressor or a smaller model."
    )


def bisect_fewest_fitting(real: SizeMemo, total: int, budget_bytes: int) -> int:
    """Plain binary search over the count with real sizes; ``real(0)`` must be over the budget."""
    if real(total) > budget_bytes:
        raise hopeless_pruning_error(real(0), real(total), total, budget_bytes)
    too_few, enough = 0, total  # pruning `too_few` does not fit, `enough` does
    while enough - too_few > 1:
        middle = (too_few + enough) // 2
        if real(middle) <= budget_bytes:
            enough = middle
        else:
            too_few = middle
    return enough


def estimated_size(real: SizeMemo, estimate: SizeMemo, count: int) -> tuple[float, float] | None:
    """(predicted real size, margin) of pruning ``count``, or None when the estimate cannot say.

    The estimate is mapped onto real bytes through the measured counts around ``count``: linearly
    between the nearest measured count below and above; beyond the last one, byte for byte. The margin
    grows with the distance from the nearest measured size (the mapping is exact there).
    """
    below = max(n for n in real.sizes if n < count)  # count 0 is always measured
    above = min((n for n in real.sizes if n > count), default=None)
    if above is None:  # beyond the last measurement: assume the real size moves byte for byte
        predicted = real(below) + estimate(count) - estimate(below)
        return predicted, PRUNE_TRUST_BEYOND * abs(predicted - real(below)) + PRUNE_TRUST_FLOOR_BYTES
    if estimate(above) == estimate(below):
        return None
    slope = (real(above) - real(below)) / (estimate(above) - estimate(below))
    predicted = real(below) + (estimate(count) - estimate(below)) * slope
    distance = min(abs(predicted - real(below)), abs(real(above) - predicted))
    return predicted, PRUNE_TRUST_BETWEEN * distance + PRUNE_TRUST_FLOOR_BYTES


def estimated_fit(real: SizeMemo, estimate: SizeMemo, count: int, budget_bytes: int) -> bool | None:
    """Does pruning ``count`` fit, judged from the estimate? None when it is too close to call."""
    guess = estimated_size(real, estimate, count)
    if guess is None or abs(guess[0] - budget_bytes) <= guess[1]:
        return None
    return guess[0] <= budget_bytes


def predicted_path(real: SizeMemo, estimate: SizeMemo, too_few: int, enough: int, budget_bytes: int) -> list[int]:
    """The counts the binary search visits from (too_few, enough) if every unmeasured step goes the way
    the estimate leans (no margin): the measurements it will most likely need, in order."""
    path = []
    while enough - too_few > 1:
        middle = (too_few + enough) // 2
        path.append(middle)
        if middle in real.sizes:
            fits = real.sizes[middle] <= budget_bytes
        else:
            guess = estimated_size(real, estimate, middle)
            fits = guess is None or guess[0] <= budget_bytes  # no lean at all: either way is a guess
        too_few, enough = (too_few, middle) if fits else (middle, enough)
    return path


def _bisect_with_estimates(real: SizeMemo, estimate: SizeMemo, total: int, budget_bytes: int) -> tuple[int, int]:
    """:func:`bisect_fewest_fitting`'s path, each step decided by the estimate where it is clear and
    measured otherwise (with the likely next ones alongside); returns the final (too_few, enough)."""
    def fits(count: int, too_few: int, enough: int) -> bool:
        if count not in real.sizes:
            verdict = estimated_fit(real, estimate, count, budget_bytes)
            if verdict is not None:
                return verdict
            # this step must be measured: so are the next undecidable steps of the likely path, in parallel
            ahead = [] if real.workers == 1 else [
                n for n in predicted_path(real, estimate, too_few, enough, budget_bytes)[1:]
                if n not in real.sizes and estimated_fit(real, estimate, n, budget_bytes) is None]
            real.measure_many([count] + ahead[:real.workers - 1])
        return real(count) <= budget_bytes

    if not fits(total, total - 1, total + 1) and real(total) > budget_bytes:
        raise hopeless_pruning_error(real(0), real(total), total, budget_bytes)
    too_few, enough = 0, total
    while enough - too_few > 1:
        middle = (too_few + enough) // 2
        if fits(middle, too_few, enough):
            enough = middle
        else:
            too_few = middle
    return too_few, enough


def estimated_fewest_fitting(real: SizeMemo, estimate: SizeMemo, total: int, budget_bytes: int) -> int:
    """The plain binary search's answer from fewer real measurements (see the module docstring).

    The final pair (``enough`` fits, ``too_few`` does not) is always measured; if a measurement
    contradicts the path, the search runs again with it known (sizes are memoised) until the pair
    holds. Unless the estimate misjudges a count by more than its margin, every step goes the way the
    real sizes send it, so the result is :func:`bisect_fewest_fitting`'s.
    """
    while True:
        too_few, enough = _bisect_with_estimates(real, estimate, total, budget_bytes)
        real.measure_many([too_few, enough])
        if real(enough) <= budget_bytes and (too_few == 0 or real(too_few) > budget_bytes):
            return enough
