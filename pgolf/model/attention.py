"""Causal grouped-query self-attention with q/k RMS norm, rotary and a per-head query gain."""

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear, Rotary, apply_rotary


class CausalSelfAttention(nn.Module):
    """Attention of physical block ``layer_index``; per-layer features (XSA on the last N) read it."""

    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        model_dim = cfg.model_dim
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = model_dim // cfg.num_heads
        kv_dim = cfg.num_kv_heads * self.head_dim
        self.c_q = CastedLinear(model_dim, model_dim)
        self.c_k = CastedLinear(model_dim, kv_dim)
        self.c_v = CastedLinear(model_dim, kv_dim)
        self.proj = CastedLinear(model_dim, model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), float(cfg.qk_gain_init)))
        self.rotary = Rotary(self.head_dim, base=cfg.rope_base)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q = self.c_q(x_BTD).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x_BTD).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x_BTD).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        # q/k norm (no weights) keeps attention logits bounded; q_gain then sets their scale per head.
        q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        cos, sin = self.rotary(T, x_BTD.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y_BHTD = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads
        )
        return self.proj(y_BHTD.transpose(1, 2).reshape(B, T, D))
