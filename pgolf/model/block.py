"""One transformer block: residual mix with the embedding, attention, MLP, each with a learned scale."""

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.layers import CastedLinear, RMSNorm


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


class MLP(nn.Module):
    def __init__(self, model_dim: int, mlp_mult: float):
        super().__init__()
        hidden = int(mlp_mult * model_dim)
        self.fc = CastedLinear(model_dim, hidden)
        self.proj = CastedLinear(hidden, model_dim, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(relu_squared(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        model_dim = cfg.model_dim
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = CausalSelfAttention(cfg, layer_index)
        self.mlp = MLP(model_dim, cfg.mlp_mult)
        self.attn_scale = nn.Parameter(torch.ones(model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(model_dim))
        # Row 0 weighs the running residual, row 1 the block-0 input x0; starts as "residual only".
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(model_dim), torch.zeros(model_dim))))

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(self.attn_norm(x))
        x = x + self.mlp_scale.to(x.dtype) * self.mlp(self.mlp_norm(x))
        return x
