"""Selective +-1 pruning: zero the cheapest +-1 codes until the artifact fits (SPEC 5.12).

Every code equal to +1 or -1 in a per-row quantised matrix (policy groups embed/attn/mlp/matrix) is a
candidate; zeroing it changes the weight by exactly one step, so its cost is ``(row scale)^2``.
Candidates are sorted by cost (ties: state-dict order, then position) and a binary search finds the
smallest number ``n`` of cheapest candidates whose zeroing makes ``size_of(tensors) <= budget``.
Zeros compress better than +-1, so size falls (almost always monotonically) with ``n``.

The budget is in decimal bytes (the cap is 16,000,000, not 15.9 MiB as in the record that introduced
the idea). If even pruning every candidate does not fit, an ArtifactError states the exact margin.
"""

from dataclasses import dataclass, field
from typing import Callable

import torch

from pgolf.errors import ArtifactError
from pgolf.quant.policy import QUANT_MATRIX_GROUPS


@dataclass(frozen=True)
class PruneResult:
    """What pruning did: ``pruned`` of ``candidates`` codes zeroed, per tensor, and the final size."""

    pruned: int
    candidates: int
    size_bytes: int
    budget_bytes: int
    per_tensor: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"pruned": self.pruned, "candidates": self.candidates, "size_bytes": self.size_bytes,
                "budget_bytes": self.budget_bytes, "per_tensor": dict(self.per_tensor)}


@dataclass
class _PruneCandidates:
    names: list[str]            # code-tensor keys ("<name>.q"), in state-dict order
    tensor_index: torch.Tensor  # which name each candidate belongs to, sorted by cost
    flat_index: torch.Tensor    # position inside that code tensor, sorted by cost


def _gather_candidates(tensors: dict[str, torch.Tensor], meta: dict) -> _PruneCandidates:
    names, owners, positions, costs = [], [], [], []
    for name, entry in meta["entries"].items():
        if entry.get("scheme") != "int8_per_row" or entry.get("group") not in QUANT_MATRIX_GROUPS:
            continue
        codes_RC, scale_R = tensors[name + ".q"], tensors[name + ".scale"].float()
        flat = torch.nonzero((codes_RC == 1) | (codes_RC == -1), as_tuple=False)
        rows, cols = flat[:, 0], flat[:, 1]
        owners.append(torch.full((len(flat),), len(names), dtype=torch.int64))
        positions.append(rows * codes_RC.shape[1] + cols)
        costs.append(scale_R[rows] ** 2)
        names.append(name + ".q")
    if not names:
        return _PruneCandidates([], torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    order = torch.argsort(torch.cat(costs), stable=True)
    return _PruneCandidates(names, torch.cat(owners)[order], torch.cat(positions)[order])


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


def prune_codes_to_fit(
    tensors: dict[str, torch.Tensor],
    meta: dict,
    size_of: Callable[[dict[str, torch.Tensor]], int],
    budget_bytes: int,
) -> tuple[dict[str, torch.Tensor], PruneResult]:
    """Zero the fewest cheapest +-1 codes so that ``size_of(result) <= budget_bytes``.

    ``tensors``/``meta`` as returned by :func:`pgolf.quant.artifact_quant.quantize_for_artifact`;
    ``size_of`` measures what counts against the budget (e.g. compressed container + code bytes). The
    input dict is not modified. Raises ArtifactError with the margin if pruning everything is not enough.
    """
    cands = _gather_candidates(tensors, meta)
    total = len(cands.flat_index)
    size = size_of(tensors)
    if size <= budget_bytes:
        return tensors, PruneResult(0, total, size, budget_bytes)
    all_pruned, _ = _apply_pruning(tensors, cands, total)
    size_all = size_of(all_pruned)
    if size_all > budget_bytes:
        raise ArtifactError(
            f"artifact is {size:,} bytes against a budget of {budget_bytes:,}; even zeroing all {total:,} "
            f"+-1 codes leaves {size_all:,} bytes, {size_all - budget_bytes:,} bytes over. Use fewer bits "
            "(MATRIX_BITS/EMBED_BITS), larger clip sigmas, a stronger compressor or a smaller model."
        )
    too_few, enough, size_enough = 0, total, size_all  # pruning `too_few` does not fit, `enough` does
    while enough - too_few > 1:
        middle = (too_few + enough) // 2
        size_middle = size_of(_apply_pruning(tensors, cands, middle)[0])
        if size_middle <= budget_bytes:
            enough, size_enough = middle, size_middle
        else:
            too_few = middle
    pruned, per_tensor = _apply_pruning(tensors, cands, enough)
    return pruned, PruneResult(enough, total, size_enough, budget_bytes, per_tensor)
