"""Small building blocks shared by the model: parameter-free RMSNorm, fp32-master linear, (partial) rotary."""

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.errors import ConfigError


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

    ``dim`` is the number of rotated dims per head: the whole head for the baseline, the first
    ``ROPE_DIMS`` for partial RoPE (SPEC 4.4.2), where the remaining dims carry no position at all.
    With ``train_seq_len > 0``, a sequence longer than that gets the NTK-style base
    ``base * (T / train_seq_len) ** (dim / (dim - 2))``, which stretches the slowest frequency over the
    longer span while leaving the fastest ones nearly unchanged.

    The tables are recomputed on every call: that costs a (T x dim/2) outer product, nothing next to
    attention, and keeps the forward free of Python-side caches that would break ``torch.compile``
    (``seq_len`` is a static int there, so the rescale branch is decided at trace time).
    """

    def __init__(self, dim: int, base: float = 10000.0, *, train_seq_len: int = 0):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ConfigError(f"rotary dims must be a positive even number, got {dim}; set ROPE_DIMS to 0 "
                              "(whole head) or an even number of dims per head.")
        if train_seq_len > 0 and dim <= 2:
            raise ConfigError(f"the NTK rescale exponent dim/(dim-2) is undefined for {dim} rotated dims; "
                              "set ROPE_DIMS >= 4 or ROPE_TRAIN_SEQ_LEN=0.")
        self.dim = dim
        self.base = base
        self.train_seq_len = train_seq_len
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape (1, 1, T, dim/2) for the (B, H, T, D) attention layout."""
        inv_freq = self.inv_freq.to(device)
        if 0 < self.train_seq_len < seq_len:  # longer than trained: NTK-rescaled base
            inv_freq = self.ntk_inv_freq(seq_len, device)
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq)
        return angles.cos()[None, None].to(dtype), angles.sin()[None, None].to(dtype)

    def ntk_inv_freq(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """Inverse frequencies for the base rescaled to a ``seq_len`` beyond ``train_seq_len``."""
        base = self.base * (seq_len / self.train_seq_len) ** (self.dim / (self.dim - 2))
        return 1.0 / (base ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``rd = 2 * cos.size(-1)`` dims of the last axis; the other dims pass through.

    Rotate-half convention within those ``rd`` dims (x1 = first rd/2, x2 = next rd/2):
    ``[x1 c + x2 s, -x1 s + x2 c]``. When ``rd`` is the whole last dim this is plain (full) RoPE.
    """
    rotated_dims = 2 * cos.size(-1)
    if rotated_dims < x.size(-1):  # partial RoPE: rotate the leading dims, keep the rest as they are
        leading, rest = x[..., :rotated_dims], x[..., rotated_dims:]
        return torch.cat((rotate_half_pairs(leading, cos, sin), rest), dim=-1)
    return rotate_half_pairs(x, cos, sin)


def rotate_half_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half on the two halves of the whole last dim of ``x`` (its size is ``2 * cos.size(-1)``)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)
