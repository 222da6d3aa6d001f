"""Small building blocks shared by the model: parameter-free RMSNorm, fp32-master linear, rotary."""

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Parameter-free RMS normalisation over the last dimension (``F.rms_norm`` with default eps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Bias-free linear whose fp32 master weight is cast to the activation dtype at matmul time.

    Keeping the weight in fp32 gives the optimizer full precision while the matmul runs in bf16 under
    autocast. ``zero_init`` marks output projections that start at zero (SPEC 2.5), so every residual
    branch begins as the identity.
    """

    def __init__(self, in_features: int, out_features: int, *, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(nn.Module):
    """Rotary position embedding tables: ``inv_freq[i] = base^(-2i/dim)``, angle = position * inv_freq.

    The tables are recomputed on every call: that costs a (T x dim/2) outer product, nothing next to
    attention, and keeps the forward free of Python-side caches that would break ``torch.compile``.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape (1, 1, T, dim/2) for the (B, H, T, D) attention layout."""
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        angles = torch.outer(positions, self.inv_freq.to(device))
        return angles.cos()[None, None].to(dtype), angles.sin()[None, None].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half convention on the two halves of the last dim: [x1 c + x2 s, -x1 s + x2 c]."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)
