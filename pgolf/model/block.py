"""One transformer block: residual mix with the embedding, attention, MLP, each with a learned scale.

The block exposes its pieces (``mix_input``, ``attention_branch``, ``mlp_branch``) so that every way of
wiring them - sequential (the baseline), GPT-J parallel (SPEC 4.4.1) or the two-lane decoder
(SPEC 5.1, ``pgolf/model/features/parallel_lanes.py``) - uses the same block maths.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.kernels.fused_mlp import fused_mlp_forward
from pgolf.model.layers import CastedLinear, RMSNorm


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """The baseline's relu(x)^2 (SPEC 2.4)."""
    return F.relu(x).square()


def leaky_relu_squared(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU(0.5)^2 (SPEC 4.4.4): negative inputs keep a gradient, unlike relu^2."""
    return F.leaky_relu(x, negative_slope=0.5).square()


# MLP activations by their config name (ModelConfig.activation).
ACTIVATIONS = {"relu2": relu_squared, "leaky_relu2": leaky_relu_squared}


class MLP(nn.Module):
    def __init__(self, model_dim: int, mlp_mult: float, activation: str = "relu2", fused: bool = False):
        super().__init__()
        hidden = int(mlp_mult * model_dim)
        self.fc = CastedLinear(model_dim, hidden)
        self.proj = CastedLinear(hidden, model_dim, zero_init=True)
        self.activation = ACTIVATIONS[activation]
        self.activation_name = activation
        self.fused = fused  # FUSED_MLP: the Triton kernel on CUDA, this same maths elsewhere

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return fused_mlp_forward(x, self.fc, self.proj, self.activation_name)
        return self.proj(self.activation(self.fc(x)))


def uses_single_lane_parallel(cfg: ModelConfig, layer_index: int) -> bool:
    """Whether physical block ``layer_index`` runs its branches side by side inside the block (GPT-J).

    The two-lane mode keeps its lanes outside the blocks (the model wires them), so its blocks are
    never parallel on their own.
    """
    start = cfg.parallel_residual_start
    return cfg.parallel_residual_mode == "single" and 0 <= start <= layer_index


class Block(nn.Module):
    """Physical block ``layer_index``: the index sets the LN scale and the parallel flag, so a block
    that depth recurrence runs several times behaves the same at every visit."""

    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        model_dim = cfg.model_dim
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = CausalSelfAttention(cfg, layer_index)
        self.mlp = MLP(model_dim, cfg.mlp_mult, cfg.activation, fused=cfg.fused_mlp)
        self.attn_scale = nn.Parameter(torch.ones(model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(model_dim))
        # Row 0 weighs the running residual, row 1 the block-0 input x0; starts as "residual only".
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(model_dim), torch.zeros(model_dim))))
        # LN scale (SPEC 4.4.1): deeper blocks see smaller normed inputs; None = off (the baseline).
        self.ln_scale_factor = 1.0 / math.sqrt(layer_index + 1) if cfg.ln_scale else None
        self.parallel = uses_single_lane_parallel(cfg, layer_index)

    def _scaled_norm(self, norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        normed = norm(x)
        return normed if self.ln_scale_factor is None else normed * self.ln_scale_factor

    def mix_input(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """``resid_mix[0] * x + resid_mix[1] * x0``: how much of the embedding is mixed back in."""
        mix = self.resid_mix.to(x.dtype)
        return mix[0] * x + mix[1] * x0

    def attention_branch(self, x: torch.Tensor, segments_BT: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_scale * Attn(attn_norm(x) * s)``: what attention adds to the residual.

        ``segments_BT``: document segment ids that keep attention inside each document (None = off)."""
        return self.attn_scale.to(x.dtype) * self.attn(self._scaled_norm(self.attn_norm, x), segments_BT)

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``mlp_scale * MLP(mlp_norm(x) * s)``: what the MLP adds to the residual."""
        return self.mlp_scale.to(x.dtype) * self.mlp(self._scaled_norm(self.mlp_norm, x))

    def forward(self, x: torch.Tensor, x0: torch.Tensor, segments_BT: torch.Tensor | None = None) -> torch.Tensor:
        x = self.mix_input(x, x0)
        if self.parallel:  # GPT-J parallel residual (SPEC 4.4.1): both branches read the same input
            return x + self.attention_branch(x, segments_BT) + self.mlp_branch(x)
        x = x + self.attention_branch(x, segments_BT)
        return x + self.mlp_branch(x)
