"""Small building blocks shared by the model: parameter-free RMSNorm, fp32-master linear, (partial) rotary.

``CastedLinear`` can also run its forward matmul in FP8 (``FP8_MATMUL=1``, see ``enable_fp8_matmul``).
"""

import torch
import torch.nn.functional as F
from torch import nn


# Largest finite float8 e4m3fn value: an amax-scaled tensor fills [-448, 448].
FP8_E4M3_MAX = 448.0
# _scaled_mm needs both dims of the weight to be multiples of 16; FP8 pays off only on large matmuls.
FP8_DIM_MULTIPLE = 16
FP8_MIN_DIM = 128


class RMSNorm(nn.Module):
    """Parameter-free RMS normalisation over the last dimension (``F.rms_norm`` with default eps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Bias-free linear whose fp32 master weight is cast to the activation dtype at matmul time.

    Keeping the weight in fp32 gives the optimizer full precision while the matmul runs in bf16 under
    autocast. ``zero_init`` marks output projections that start at zero (SPEC 2.5), so every residual
    branch begins as the identity. ``fp8_matmul`` (off unless ``enable_fp8_matmul`` sets it) runs the
    training forward as a per-tensor scaled e4m3 matmul on CUDA; everywhere else the forward is unchanged.
    """

    # A class-level default, so subclasses built without __init__ (QAT's FakeQuantLinear) have it too.
    fp8_matmul = False

    def __init__(self, in_features: int, out_features: int, *, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_matmul and self.training and x.is_cuda:  # FP8_MATMUL: e4m3 forward, bf16 backward
            return fp8_linear(x, self.weight)
        return F.linear(x, self.weight.to(x.dtype))


def fp8_e4m3_per_tensor(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` scaled so its largest magnitude is ``FP8_E4M3_MAX``, cast to float8 e4m3, and the fp32
    scalar that undoes the scaling (``t ~ t_fp8.float() * inverse_scale``)."""
    amax = t.detach().abs().amax().float().clamp_min(1e-12)
    scale = FP8_E4M3_MAX / amax
    t_fp8 = (t.detach().float() * scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return t_fp8, scale.reciprocal()


def fp8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight^T`` with both operands in e4m3 (per-tensor amax scaling), output in the compute dtype.

    The compute dtype is the autocast dtype when autocast is on (bf16 in training), else ``x``'s.
    Backward is an ordinary matmul in the compute dtype on the unquantised operands (straight-through
    for the FP8 rounding). Needs ``torch._scaled_mm`` (CUDA capability >= 8.9; recent CPU builds too).
    """
    device_type = x.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    x_MK = x.reshape(-1, x.size(-1)).to(dtype)
    out_MN = FP8LinearFunction.apply(x_MK, weight.to(dtype))
    return out_MN.view(*x.shape[:-1], weight.size(0))


class FP8LinearFunction(torch.autograd.Function):
    """Forward: ``_scaled_mm`` of the e4m3 operands; backward: bf16 (compute-dtype) matmuls."""

    @staticmethod
    def forward(ctx, x_MK: torch.Tensor, weight_NK: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x_MK, weight_NK)
        x_fp8, x_inverse_scale = fp8_e4m3_per_tensor(x_MK)
        w_fp8, w_inverse_scale = fp8_e4m3_per_tensor(weight_NK)
        # _scaled_mm wants the second operand column-major: the transpose of a row-major (N, K) weight.
        out = torch._scaled_mm(x_fp8, w_fp8.t(), scale_a=x_inverse_scale, scale_b=w_inverse_scale,
                               out_dtype=x_MK.dtype)
        return out[0] if isinstance(out, tuple) else out  # torch < 2.5 also returned the output's amax

    @staticmethod
    def backward(ctx, grad_out_MN: torch.Tensor):
        x_MK, weight_NK = ctx.saved_tensors
        grad_out_MN = grad_out_MN.to(x_MK.dtype)
        return grad_out_MN @ weight_NK, grad_out_MN.t() @ x_MK


def fp8_unavailable_reason(device: torch.device) -> str | None:
    """Why FP8 matmuls cannot run on ``device`` (None when they can)."""
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"this PyTorch ({torch.__version__}) has no torch._scaled_mm / float8_e4m3fn"
    if device.type != "cuda":
        return f"the device is {device.type}, not CUDA"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        return f"CUDA capability {capability[0]}.{capability[1]} < 8.9 (FP8 needs Ada or Hopper)"
    return None


def fp8_eligible_linear(name: str, module: nn.Module) -> bool:
    """The large block linears: plain ``CastedLinear`` under ``blocks.`` with both dims >= ``FP8_MIN_DIM``
    and multiples of ``FP8_DIM_MULTIPLE`` (gates, the head and QAT's replacements are left alone)."""
    if type(module) is not CastedLinear or not name.startswith("blocks."):
        return False
    dims = (module.in_features, module.out_features)
    return all(dim >= FP8_MIN_DIM and dim % FP8_DIM_MULTIPLE == 0 for dim in dims)


def enable_fp8_matmul(model: nn.Module, device: torch.device) -> str:
    """Switch the large block linears of ``model`` to FP8 matmuls if ``device`` supports them.

    Returns one log line: how many linears use FP8, or why none do (then every forward stays bf16).
    Call it once, on the bare model, before ``torch.compile`` and before QAT attaches.
    """
    reason = fp8_unavailable_reason(device)
    if reason is not None:
        return f"fp8_matmul:unavailable ({reason}); block linears keep bf16 matmuls"
    names = [name for name, module in model.named_modules() if fp8_eligible_linear(name, module)]
    for name in names:
        model.get_submodule(name).fp8_matmul = True
    return (f"fp8_matmul:on linears:{len(names)} (e4m3 forward, per-tensor amax scaling; "
            "backward in the autocast dtype)")


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
        # validate_config's ROPE_DIMS / ROPE_TRAIN_SEQ_LEN rules: an even number of dims, more than 2 to rescale.
        assert dim > 0 and dim % 2 == 0 and (train_seq_len <= 0 or dim > 2), (dim, train_seq_len)
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
