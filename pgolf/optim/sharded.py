"""Sharded Muon (``MUON_SHARDED=1``): each rank owns whole matrices, gets only their averaged gradients.

The replicated optimizer (:class:`pgolf.optim.muon.Muon` under DDP) all-reduces every gradient, runs
Newton-Schulz for the matrices it owns, then all-reduces a flat buffer of all updates. Sharded Muon
replaces both collectives on the matrices by the pair a sharded optimizer needs (SPEC 5.1):

1. the matrices of a param group are assigned to ranks as whole matrices, balanced by size
   (:func:`balanced_shard_layout`); every rank's matrices sit back to back in its *shard*, and all
   shards are padded to the longest one, so the group is one flat buffer of ``world_size`` equal parts;
2. ``reduce_scatter(SUM)`` of the local gradients (then ``/ world_size``) leaves on each rank exactly
   the rank-averaged gradients of its own shard;
3. momentum, Nesterov, MuonEq-R and Newton-Schulz run locally on those matrices (momentum buffers live
   only on the owner, as in the replicated mode);
4. ``all_gather`` of the bf16 update shards gives every rank every update, applied everywhere.

Per step that is one reduce-scatter and one all-gather per group instead of an all-reduce of the
gradients plus an all-reduce of the updates, and the gradient traffic of the matrices halves. The
maths is the replicated optimizer's, term for term: with the same averaged gradients the parameters
and momentum buffers agree bit for bit (``tests/dist/test_muon_sharded.py``). Everything that is not a
Muon matrix (the Adam groups) still needs its gradient averaged: :mod:`pgolf.optim.grad_sync` does it
with one flat all-reduce, and replaces DDP in sharded runs.

Backends without ``reduce_scatter_tensor`` / ``all_gather_into_tensor`` (some gloo builds) fall back to
an all-reduce of the whole buffer followed by slicing (the result is identical, the traffic is not).
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pgolf.optim.muon import Muon, apply_muon_update_

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
SHARDED_MUON_EXPORT_SWITCH = "muon_sharded"


@dataclass(frozen=True)
class MuonShardLayout:
    """Where each matrix of a param group lives in the group's flat, rank-partitioned buffer.

    Parameter ``i`` belongs to rank ``owners[i]`` and occupies ``numels[i]`` elements from
    ``offsets[i]`` inside that rank's shard; every shard has ``shard_numel`` elements (zero-padded), so
    the flat buffer is ``world_size * shard_numel`` long and rank ``r``'s part starts at
    ``r * shard_numel``.
    """

    owners: tuple[int, ...]
    offsets: tuple[int, ...]
    numels: tuple[int, ...]
    shard_numel: int
    world_size: int

    def flat_slice(self, index: int) -> slice:
        """Parameter ``index``'s elements in the flat buffer of all shards."""
        start = self.owners[index] * self.shard_numel + self.offsets[index]
        return slice(start, start + self.numels[index])

    def shard_slice(self, index: int) -> slice:
        """Parameter ``index``'s elements inside its owner's shard."""
        return slice(self.offsets[index], self.offsets[index] + self.numels[index])

    def owned_by(self, rank: int) -> list[int]:
        """Indices of the parameters ``rank`` owns, in parameter order."""
        return [index for index, owner in enumerate(self.owners) if owner == rank]


def balanced_shard_layout(numels: Sequence[int], world_size: int) -> MuonShardLayout:
    """Assign whole matrices to ranks, largest first, each to the least-loaded rank (ties: lowest rank).

    Deterministic: every rank computes the same layout from the same shapes. Inside a shard the
    matrices keep their parameter order. The padding is the difference between the fullest shard and
    each other one (zero for a group of equal matrices that divides evenly).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    loads = [0] * world_size
    owners = [0] * len(numels)
    for index in sorted(range(len(numels)), key=lambda i: (-numels[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[index] = rank
        loads[rank] += numels[index]
    offsets, filled = [], [0] * world_size
    for index, rank in enumerate(owners):
        offsets.append(filled[rank])
        filled[rank] += numels[index]
    return MuonShardLayout(tuple(owners), tuple(offsets), tuple(numels), max(loads, default=0), world_size)


def reduce_scatter_sum(shard: torch.Tensor, flat: torch.Tensor, *, native: bool) -> None:
    """``shard`` = this rank's part of ``flat`` summed over ranks (``native=False``: all-reduce + slice)."""
    if native:
        dist.reduce_scatter_tensor(shard, flat, op=dist.ReduceOp.SUM)
        return
    summed = flat.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    shard.copy_(summed.view(dist.get_world_size(), -1)[dist.get_rank()])


def all_gather_flat(flat: torch.Tensor, shard: torch.Tensor, *, native: bool) -> None:
    """``flat`` = every rank's ``shard`` back to back (``native=False``: all-reduce of a zero-padded copy,
    exact because every entry is one shard's value plus zeros)."""
    if native:
        dist.all_gather_into_tensor(flat, shard)
        return
    flat.zero_()
    flat.view(dist.get_world_size(), -1)[dist.get_rank()].copy_(shard)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)


class ShardedMuon(Muon):
    """Muon whose gradient averaging and update exchange are a reduce-scatter and an all-gather.

    Takes :class:`Muon`'s arguments plus ``native_collectives``: True uses ``reduce_scatter_tensor`` and
    ``all_gather_into_tensor``, False the all-reduce fallback, None (default) tries the native ones on
    the first step and falls back for good if the backend refuses them (the refusal is local and
    identical on every rank, so all ranks take the same path).

    Gradients must be the ranks' *local* ones (no DDP): call :meth:`reduce_scatter_gradients` after the
    last backward of a step (directly or through :func:`pgolf.optim.grad_sync.synchronize_gradients`),
    or let :meth:`step` do it. Afterwards ``p.grad`` of a matrix still holds the local gradient; the
    averaged one exists only in the owner's shard (:meth:`shard_gradient_square_sum` and
    :meth:`scale_shard_gradients_` serve gradient clipping). ``state_dict`` holds the momentum buffers
    of this rank's matrices only, like the replicated mode; save one per rank.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], *,
                 native_collectives: bool | None = None, **muon_kwargs) -> None:
        super().__init__(params, **muon_kwargs)
        self.native_collectives = native_collectives
        self._layouts: dict[int, MuonShardLayout] = {}
        self._shard_grads: dict[int, torch.Tensor] = {}

    def layout(self, group_index: int) -> MuonShardLayout:
        """The shard layout of param group ``group_index`` (computed once from its shapes)."""
        numels = tuple(p.numel() for p in self.param_groups[group_index]["params"])
        cached = self._layouts.get(group_index)
        if cached is None or cached.numels != numels:
            cached = self._layouts[group_index] = balanced_shard_layout(numels, self.world_size)
        return cached

    def _with_fallback(self, collective: Callable[..., None], *args) -> None:
        """Run ``collective`` natively, or with the all-reduce fallback when the backend lacks it."""
        if self.native_collectives is None:
            try:
                collective(*args, native=True)
                self.native_collectives = True
                return
            except (RuntimeError, NotImplementedError, ValueError):
                self.native_collectives = False
        collective(*args, native=self.native_collectives)

    @torch.no_grad()
    def reduce_scatter_gradients(self) -> None:
        """Average the matrices' gradients over ranks, keeping on each rank only its own shard."""
        self._check_process_group()
        for group_index, group in enumerate(self.param_groups):
            if group["params"]:
                self._shard_grads[group_index] = self._reduce_scatter_group(group, self.layout(group_index))

    def _reduce_scatter_group(self, group: dict, layout: MuonShardLayout) -> torch.Tensor:
        params = group["params"]
        # fp32 for the sum: the averaged gradient feeds the momentum buffer at full precision.
        flat = torch.zeros(layout.world_size * layout.shard_numel, dtype=torch.float32, device=params[0].device)
        for index, p in enumerate(params):
            if p.grad is not None:  # a missing gradient stays zero; its owner skips the matrix
                flat[layout.flat_slice(index)] = p.grad.reshape(-1)
        if self.world_size == 1:
            return flat
        shard = torch.empty(layout.shard_numel, dtype=flat.dtype, device=flat.device)
        self._with_fallback(reduce_scatter_sum, shard, flat)
        return shard.div_(self.world_size)

    def shard_gradient_square_sum(self) -> torch.Tensor:
        """Sum of squares of this rank's averaged shard gradients (after :meth:`reduce_scatter_gradients`).

        Summed over ranks, plus the replicated parameters' share, it is the squared global gradient norm.
        """
        shards = list(self._shard_grads.values())
        if not shards:
            raise RuntimeError("ShardedMuon.shard_gradient_square_sum needs reduce_scatter_gradients() first.")
        return sum(shard.float().square().sum() for shard in shards)

    @torch.no_grad()
    def scale_shard_gradients_(self, factor: torch.Tensor | float) -> None:
        """Multiply the averaged shard gradients by ``factor`` (gradient clipping)."""
        for shard in self._shard_grads.values():
            shard.mul_(factor)

    def _update_all_groups(self) -> None:
        """One Muon update of every matrix (``Muon.step`` calls this); reduce-scatters the gradients
        first if nobody did."""
        if not self._shard_grads:
            self.reduce_scatter_gradients()
        for group_index, group in enumerate(self.param_groups):
            if group["params"]:
                self._step_sharded_group(group, self.layout(group_index), self._shard_grads[group_index])
        self._shard_grads = {}

    def _step_sharded_group(self, group: dict, layout: MuonShardLayout, shard_grad: torch.Tensor) -> None:
        params = group["params"]
        local_updates = torch.zeros(layout.shard_numel, dtype=torch.bfloat16, device=shard_grad.device)
        for index in layout.owned_by(self.rank):
            p = params[index]
            if p.grad is None:  # no gradient anywhere (same graph on every rank): no momentum, no update
                continue
            # (With one rank the shard is the whole flat buffer and both slices coincide.)
            grad = shard_grad[layout.shard_slice(index)].view_as(p)
            local_updates[layout.shard_slice(index)] = self._orthogonal_update(p, grad, group).reshape(-1)
        updates_flat = local_updates
        if self.world_size > 1:
            updates_flat = torch.empty(layout.world_size * layout.shard_numel, dtype=torch.bfloat16,
                                       device=local_updates.device)
            self._with_fallback(all_gather_flat, updates_flat, local_updates)
        for index, p in enumerate(params):
            apply_muon_update_(p, updates_flat[layout.flat_slice(index)], group)

    def _check_process_group(self) -> None:
        if self.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"ShardedMuon was built with world_size={self.world_size} but torch.distributed is not "
                "initialised; initialise the process group first or build it with world_size=1."
            )
