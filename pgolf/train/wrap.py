"""The model as the training loop calls it: compiled (COMPILE=1) and, with several ranks, DDP-wrapped."""

import torch
from torch.nn.parallel import DistributedDataParallel

from pgolf.config import ModelConfig
from pgolf.dist import DistContext
from pgolf.model.kernels.fused_mlp import load_fused_mlp_kernels
from pgolf.model.kernels.softcap_ce import load_softcap_ce_kernels
from pgolf.optim.grad_sync import broadcast_parameters_from_rank0_
from pgolf.optim.sharded import ShardedMuon


def uses_sharded_muon(optimizers: list[torch.optim.Optimizer]) -> bool:
    return any(isinstance(opt, ShardedMuon) for opt in optimizers)


def load_kernels_for_compile(model_cfg: ModelConfig) -> None:
    """A compiled graph cannot load the Triton kernels itself: load the ones the run uses first."""
    if model_cfg.fused_cross_entropy:
        load_softcap_ce_kernels()
    if model_cfg.fused_mlp:
        load_fused_mlp_kernels()


def wrap_for_training(model: torch.nn.Module, model_cfg: ModelConfig, compile_model: bool, ctx: DistContext, *,
                      sharded_muon: bool = False) -> torch.nn.Module:
    """Compile and, with several ranks, DDP-wrap the model. With sharded Muon the optimizers synchronise
    the gradients themselves (pgolf.optim.grad_sync), so no DDP: rank 0's initial weights are broadcast
    instead, as DDP would."""
    forward_model: torch.nn.Module = model
    if compile_model:
        load_kernels_for_compile(model_cfg)
        forward_model = torch.compile(model, dynamic=False, fullgraph=True)
    if ctx.is_distributed and sharded_muon:
        broadcast_parameters_from_rank0_(model)
    elif ctx.is_distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        forward_model = DistributedDataParallel(forward_model, device_ids=device_ids, broadcast_buffers=False)
    return forward_model
