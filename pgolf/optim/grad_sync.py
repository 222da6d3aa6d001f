"""Gradient synchronisation without DDP, for sharded Muon runs (``MUON_SHARDED=1``, several ranks).

With sharded Muon the model is not wrapped in DDP. After the last backward of a step,
:func:`synchronize_gradients` averages every gradient over ranks in two ways:

* the Muon matrices are reduce-scattered by :class:`pgolf.optim.sharded.ShardedMuon` (each rank keeps
  the averaged gradients of the matrices it owns);
* every other parameter (the Adam groups: embedding, head, scalars and gates) is small or replicated,
  and is averaged by ONE all-reduce of one flat fp32 buffer (:func:`flat_all_reduce_mean`), instead of
  DDP's bucketed all-reduces.

Gradient clipping then needs the norm of gradients that no single rank holds in full:
:func:`clip_grad_norm_synchronized_` adds the replicated part (identical on every rank) to the
all-reduced sum of the shards' parts, and scales both. Because DDP also broadcast rank 0's initial
weights, :func:`broadcast_parameters_from_rank0_` does that once before training.

In one process every function here is a no-op on the replicated gradients, so callers need not branch.
"""

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from pgolf.optim.sharded import ShardedMuon


def _world_size_if_distributed() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def flat_all_reduce_mean(params: Iterable[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over ranks, with one all-reduce of one flat buffer.

    Parameters without a gradient are skipped; which ones have a gradient must agree across ranks
    (it does: every rank runs the same graph). The sum is taken in fp32 (exact for bf16 gradients) and
    written back in each gradient's dtype.
    """
    world_size = _world_size_if_distributed()
    grads = [p.grad for p in params if p.grad is not None]
    if world_size == 1 or not grads:
        return
    flat = torch.cat([grad.reshape(-1).float() for grad in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def replicated_parameters(optimizers: Sequence[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """The parameters of every optimizer that is not a :class:`ShardedMuon` (their gradients are replicated)."""
    return [p for opt in optimizers if not isinstance(opt, ShardedMuon)
            for group in opt.param_groups for p in group["params"]]


def synchronize_gradients(optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Average all gradients over ranks: reduce-scatter the sharded Muon matrices, one flat all-reduce
    for the rest. Call once per optimizer step, after the last micro-batch's backward, on every rank."""
    for opt in optimizers:
        if isinstance(opt, ShardedMuon):
            opt.reduce_scatter_gradients()
    flat_all_reduce_mean(replicated_parameters(optimizers))


@torch.no_grad()
def clip_grad_norm_synchronized_(optimizers: Sequence[torch.optim.Optimizer], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over every parameter after :func:`synchronize_gradients`.

    The global L2 norm combines the replicated gradients (the same on every rank) with the sharded
    matrices' averaged gradients (summed over ranks by one scalar all-reduce); every gradient is then
    multiplied by ``min(1, max_norm / (norm + 1e-6))``, torch's rule. Returns the norm before clipping.
    """
    replicated = [p.grad for p in replicated_parameters(optimizers) if p.grad is not None]
    sharded = [opt for opt in optimizers if isinstance(opt, ShardedMuon)]
    square_sum = sum((grad.float().square().sum() for grad in replicated), torch.zeros(()))
    if sharded:
        shard_square_sum = sum(opt.shard_gradient_square_sum() for opt in sharded)
        if _world_size_if_distributed() > 1:
            dist.all_reduce(shard_square_sum, op=dist.ReduceOp.SUM)
        square_sum = square_sum.to(shard_square_sum.device) + shard_square_sum
    total_norm = square_sum.sqrt()
    clip_coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    for grad in replicated:
        grad.mul_(clip_coef.to(grad.device, grad.dtype))
    for opt in sharded:
        opt.scale_shard_gradients_(clip_coef)
    return total_norm


@torch.no_grad()
def broadcast_parameters_from_rank0_(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does when it wraps a model)."""
    if _world_size_if_distributed() == 1:
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)
