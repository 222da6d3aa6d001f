"""Selective +-1 pruning: zero the cheapest +-1 codes until the artifact fits (SPEC 5.12).

Every code equal to +1 or -1 in a per-row quantised matrix (policy groups embed/attn/mlp/matrix) is a
candidate; zeroing it changes the weight by exactly one step, so its cost is ``(row scale)^2``.
Candidates are sorted by cost (ties: state-dict order, then position) and a binary search finds the
smallest number ``n`` of cheapest candidates whose zeroing makes ``size_of(tensors) <= budget``.
Zeros compress better than +-1, so size falls (almost always monotonically) with ``n``. Each real
size is a whole-model compression, so the search (:mod:`pgolf.quant.prune_search`) measures only the
steps that the codes' entropy cannot decide.

The budget is in decimal bytes (the cap is 16,000,000, not 15.9 MiB as in the record that introduced
the idea). If even pruning every candidate does not fit, an ArtifactError states the exact margin.
"""

from dataclasses import dataclass, field
from typing import Callable

import torch

from pgolf.quant.policy import QUANT_MATRIX_GROUPS
from pgolf.quant.prune_search import SizeMemo, bisect_fewest_fitting, estimated_fewest_fitting

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
PRUNE_EXPORT_SWITCH = "fit_to_cap"


@dataclass(frozen=True)
class PruneResult:
    """What pruning did: ``pruned`` of ``candidates`` codes zeroed, per tensor, and the final size."""

    pruned: int
    candidates: int
    size_bytes: int
    budget_bytes: int
    per_tensor: dict[str, int] = field(default_factory=dict)
    measured_sizes: int = 0    # calls of the real size function during the search
    measurement_rounds: int = 0  # waits for them (measurements made in parallel count once)
    estimated_sizes: int = 0   # calls of the entropy estimate

    def as_dict(self) -> dict:
        return {"pruned": self.pruned, "candidates": self.candidates, "size_bytes": self.size_bytes,
                "budget_bytes": self.budget_bytes, "per_tensor": dict(self.per_tensor),
                "measured_sizes": self.measured_sizes, "measurement_rounds": self.measurement_rounds,
                "estimated_sizes": self.estimated_sizes}


@dataclass
class _PruneCandidates:
    names: list[str]            # code-tensor keys ("<name>.q"), in state-dict order
    tensor_index: torch.Tensor  # which name each candidate belongs to, sorted by cost
    flat_index: torch.Tensor    # position inside that code tensor, sorted by cost
    values: torch.Tensor        # the code (+1 or -1), sorted by cost


def _gather_candidates(tensors: dict[str, torch.Tensor], meta: dict) -> _PruneCandidates:
    names, owners, positions, costs, values = [], [], [], [], []
    for name, entry in meta["entries"].items():
        if entry.get("scheme") != "int8_per_row" or entry.get("group") not in QUANT_MATRIX_GROUPS:
            continue
        codes_RC, scale_R = tensors[name + ".q"], tensors[name + ".scale"].float()
        flat = torch.nonzero((codes_RC == 1) | (codes_RC == -1), as_tuple=False)
        rows, cols = flat[:, 0], flat[:, 1]
        owners.append(torch.full((len(flat),), len(names), dtype=torch.int64))
        positions.append(rows * codes_RC.shape[1] + cols)
        costs.append(scale_R[rows] ** 2)
        values.append(codes_RC[rows, cols])
        names.append(name + ".q")
    if not names:
        empty = torch.zeros(0, dtype=torch.int64)
        return _PruneCandidates([], empty, empty, empty)
    order = torch.argsort(torch.cat(costs), stable=True)
    return _PruneCandidates(names, torch.cat(owners)[order], torch.cat(positions)[order], torch.cat(values)[order])


def _apply_pruning(tensors: dict[str, torch.Tensor], cands: _PruneCandidates, count: int):
    """A copy of ``tensors`` with the ``count`` cheapest candidates zeroed; (tensors, per-tensor counts)."""
    pruned = dict(tensors)
    per_tensor: dict[str, int] = {}
    owners, positions = cands.tensor_index[:count], cands.flat_index[:count]
    for index, key in enumerate(cands.names):
        mine = positions[owners == index]
        if len(mine) == 0:
            continue
        codes = tensors[key].clone()
        codes.view(-1)[mine] = 0
        pruned[key] = codes
        per_tensor[key.removesuffix(".q")] = len(mine)
    return pruned, per_tensor


def code_entropy_bytes(tensors: dict[str, torch.Tensor], keys: list[str]) -> float:
    """Order-0 entropy of the int8 codes under ``keys``, in bytes (each tensor's own histogram).

    The search's size estimate: what an ideal coder of independent codes would need. Compressors do
    better or worse, but their size moves with it as codes turn to 0, and it has none of their
    byte-level jitter. :class:`_PrunedEntropy` computes the same number for pruned counts from
    histograms alone.
    """
    return _entropy_bytes_of_histograms(torch.stack([_code_histogram(tensors[key]) for key in keys]))


def _code_histogram(codes: torch.Tensor) -> torch.Tensor:
    return torch.bincount(codes.reshape(-1).to(torch.int64) + 128, minlength=256).double()


def _entropy_bytes_of_histograms(counts_T256: torch.Tensor) -> float:
    totals_T1 = counts_T256.sum(dim=1, keepdim=True)
    terms = counts_T256 * torch.log2(totals_T1 / counts_T256.clamp_min(1))
    return float(terms.sum()) / 8  # empty bins contribute 0 * log2(...) = 0


class _PrunedEntropy:
    """``code_entropy_bytes`` of the model with the ``count`` cheapest candidates zeroed, without making
    that model: each candidate moves one count from its tensor's +1 or -1 bin to the 0 bin."""

    def __init__(self, tensors: dict[str, torch.Tensor], cands: _PruneCandidates):
        self.base_T256 = torch.stack([_code_histogram(tensors[key]) for key in cands.names]) if cands.names else None
        self.bins = cands.tensor_index * 256 + cands.values.to(torch.int64) + 128

    def __call__(self, count: int) -> float:
        if self.base_T256 is None:
            return 0.0
        moved = torch.bincount(self.bins[:count], minlength=self.base_T256.numel()).double().view_as(self.base_T256)
        counts = self.base_T256 - moved
        counts[:, 128] += moved.sum(dim=1)
        return _entropy_bytes_of_histograms(counts)


def prune_codes_to_fit(
    tensors: dict[str, torch.Tensor],
    meta: dict,
    size_of: Callable[[dict[str, torch.Tensor]], int],
    budget_bytes: int,
    *,
    initial_size: int | None = None,
    workers: int = 1,
    plain_bisection: bool = False,
) -> tuple[dict[str, torch.Tensor], PruneResult]:
    """Zero the fewest cheapest +-1 codes so that ``size_of(result) <= budget_bytes``.

    ``tensors``/``meta`` as returned by :func:`pgolf.quant.artifact_quant.quantize_for_artifact`;
    ``size_of`` measures what counts against the budget (e.g. compressed container + code bytes).
    ``initial_size`` is ``size_of(tensors)`` when the caller already knows it (saves one measurement).
    The binary search over the count decides the steps that are clear from the codes' entropy
    (:func:`code_entropy_bytes`) without calling ``size_of``
    (:func:`pgolf.quant.prune_search.estimated_fewest_fitting`): the plain search's result from a
    fraction of its measurements. ``plain_bisection=True`` runs the plain search (the reference).
    ``workers`` > 1 also measures the likely next steps in parallel threads (``size_of`` must be
    thread-safe), which changes the wall time, not the result.
    The input dict is not modified. Raises ArtifactError with the margin if pruning everything is not enough.
    """
    cands = _gather_candidates(tensors, meta)
    total = len(cands.flat_index)
    size = size_of(tensors) if initial_size is None else initial_size
    if size <= budget_bytes:
        return tensors, PruneResult(0, total, size, budget_bytes)
    real = SizeMemo(lambda count: size_of(_apply_pruning(tensors, cands, count)[0]), {0: size}, workers=workers)
    estimate = SizeMemo(_PrunedEntropy(tensors, cands))
    if plain_bisection:
        enough = bisect_fewest_fitting(real, total, budget_bytes)
    else:
        enough = estimated_fewest_fitting(real, estimate, total, budget_bytes)
    pruned, per_tensor = _apply_pruning(tensors, cands, enough)
    return pruned, PruneResult(enough, total, real(enough), budget_bytes, per_tensor,
                               measured_sizes=real.measured, measurement_rounds=real.rounds,
                               estimated_sizes=estimate.measured)
