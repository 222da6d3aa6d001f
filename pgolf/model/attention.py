"""Causal grouped-query self-attention with q/k RMS norm, rotary and a per-head query gain.

Baseline per SPEC 2.4; record-stack options (all off by default, off = the baseline bit for bit):
partial RoPE and its NTK rescale (``ROPE_DIMS``, ``ROPE_TRAIN_SEQ_LEN``, SPEC 4.4.2), exclusive
self-attention on the last layers (``XSA_LAST_N``, SPEC 4.4.3, ``features/xsa.py``) and a per-head
output gate (``ATTN_OUT_GATE``, SPEC 5.5, ``features/attn_gate.py``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig
from pgolf.model.features.attn_gate import build_attention_output_gate
from pgolf.model.features.xsa import ExclusiveSelfAttention
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
        # ROPE_DIMS = 0 rotates the whole head (baseline); otherwise only the first ROPE_DIMS dims.
        self.rotary = Rotary(cfg.rope_dims or self.head_dim, base=cfg.rope_base,
                             train_seq_len=cfg.rope_train_seq_len)
        uses_xsa = layer_index >= cfg.num_layers - cfg.xsa_last_n
        self.xsa = ExclusiveSelfAttention(cfg.num_heads, cfg.num_kv_heads) if uses_xsa else None
        self.attn_gate = build_attention_output_gate(cfg)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q = self.c_q(x_BTD).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x_BTD).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x_BTD).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        # q/k norm (no weights) keeps attention logits bounded; q_gain then sets their scale per head.
        q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        # RoPE on the first rotary.dim dims of each head (partial RoPE), NTK-rescaled past the training length.
        cos, sin = self.rotary(T, x_BTD.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y_BHTD = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads
        )
        if self.xsa is not None:  # XSA: drop each head's component along its own token's value direction
            y_BHTD = self.xsa(y_BHTD, v)
        if self.attn_gate is not None:  # output gate: scale each head by a gate read from the input x
            y_BHTD = self.attn_gate(x_BTD, y_BHTD)
        return self.proj(y_BHTD.transpose(1, 2).reshape(B, T, D))
