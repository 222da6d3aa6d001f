"""The MLP with its squared (Leaky)ReLU fused into the ``fc`` matmul (SPEC 5.1; ``FUSED_MLP=1``).

Eager, ``proj(act(fc(x)))`` writes the pre-activation ``z = x W_fc^T`` to memory, reads it back for
``act`` (and again for its intermediates), and keeps both for backward. The fused path:

* forward: one Triton matmul whose epilogue writes ``z`` (saved for backward) and
  ``h = act(z) = leaky_relu(z, slope)^2`` (slope 0 is relu^2, 0.5 the record's LeakyReLU(0.5)^2) while
  the tile is still in registers; ``proj`` is an ordinary matmul;
* backward: one elementwise kernel ``dz = dh * act'(z)`` with ``act'(z) = 2z`` for ``z > 0`` and
  ``2 slope^2 z`` otherwise (= 2 lrelu(z) lrelu'(z)); the two weight/input gradients are ordinary matmuls.

``z`` is rounded to the compute dtype before the activation, as the eager path rounds ``fc``'s output,
so ``h`` matches the eager value whenever the matmul does. :func:`fused_mlp_forward` is the entry
point: the Triton path when Triton imports, ``x`` is on CUDA, the compute dtype is bf16/fp16 and both
linears are plain :class:`CastedLinear` (not QAT's fake-quant replacements, not FP8), otherwise the eager
modules, bit for bit today's MLP. Triton is imported lazily; under ``torch.compile`` call
:func:`load_fused_mlp_kernels` once before compiling (the kernels become ``pgolf::`` custom ops).
"""


import torch
import torch.nn.functional as F

from pgolf.model.layers import CastedLinear
from pgolf.model.kernels.loading import load_kernel_set

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
FUSED_MLP_EXPORT_SWITCH = "fused_mlp"

# Negative slope of the activation inside the square, by ModelConfig.activation.
MLP_ACTIVATION_NEGATIVE_SLOPES = {"relu2": 0.0, "leaky_relu2": 0.5}
# Filled once by load_fused_mlp_kernels(): the custom ops, or "error" with the reason Triton is unusable.
FUSED_MLP_KERNELS: dict[str, object] = {}
# Every build so far, by whether Triton's CPU interpreter (TRITON_INTERPRET=1) was on: tests run the
# kernels interpreted, and a later real build must not collide with their op names.
FUSED_MLP_BUILDS: dict[bool, dict[str, object]] = {}
FUSED_MLP_ELEMENTWISE_BLOCK = 1024


def mlp_activation_reference(z: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """``leaky_relu(z, slope)^2`` with the very ops of ``pgolf.model.block`` (relu for slope 0)."""
    if negative_slope == 0.0:
        return F.relu(z).square()
    return F.leaky_relu(z, negative_slope=negative_slope).square()


def fused_mlp_forward(x: torch.Tensor, fc: torch.nn.Module, proj: torch.nn.Module, activation: str) -> torch.Tensor:
    """``proj(act(fc(x)))`` with ``act`` named as in ``ACTIVATIONS``; fused where possible (see module doc)."""
    negative_slope = MLP_ACTIVATION_NEGATIVE_SLOPES[activation]
    if _fused_mlp_applicable(x, fc, proj):
        return proj(fused_linear_squared_activation(x, fc.weight, negative_slope))
    return proj(mlp_activation_reference(fc(x), negative_slope))


def _mlp_compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear`` would compute in: the autocast dtype when autocast is on, else ``x``'s."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _fused_mlp_applicable(x: torch.Tensor, fc: torch.nn.Module, proj: torch.nn.Module) -> bool:
    plain = type(fc) is CastedLinear and type(proj) is CastedLinear and not fc.fp8_matmul
    low_precision = _mlp_compute_dtype(x) in (torch.bfloat16, torch.float16)
    return x.is_cuda and plain and low_precision and fused_mlp_kernels_ready()


def fused_mlp_kernels_ready() -> bool:
    """True when the Triton kernels are loaded; loads them on first use outside ``torch.compile``."""
    if not FUSED_MLP_KERNELS and not torch.compiler.is_compiling():
        load_fused_mlp_kernels()
    return "forward" in FUSED_MLP_KERNELS


def fused_linear_squared_activation(x: torch.Tensor, weight: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """``leaky_relu(x W^T, slope)^2`` through the Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    ``x``: (..., K); ``weight``: (N, K) in any dtype (an fp32 master weight is cast like ``CastedLinear``
    does); both are cast to the compute dtype, and the gradients flow back through the casts.
    """
    if not fused_mlp_kernels_ready():
        raise RuntimeError(f"the fused MLP kernels are unavailable: {FUSED_MLP_KERNELS.get('error')}")
    dtype = _mlp_compute_dtype(x)
    x_MK = x.reshape(-1, x.size(-1)).to(dtype)
    h_MN = LinearSquaredActivationFunction.apply(x_MK, weight.to(dtype), float(negative_slope))
    return h_MN.view(*x.shape[:-1], weight.size(0))


class LinearSquaredActivationFunction(torch.autograd.Function):
    """``h = act(x W^T)`` for 2-D ``x`` and ``W`` of one dtype; saves the pre-activation for backward."""

    @staticmethod
    def forward(ctx, x_MK: torch.Tensor, weight_NK: torch.Tensor, negative_slope: float) -> torch.Tensor:
        x_MK, weight_NK = x_MK.contiguous(), weight_NK.contiguous()
        z_MN, h_MN = FUSED_MLP_KERNELS["forward"](x_MK, weight_NK, negative_slope)
        ctx.save_for_backward(x_MK, weight_NK, z_MN)
        ctx.negative_slope = negative_slope
        return h_MN

    @staticmethod
    def backward(ctx, grad_h_MN: torch.Tensor):
        x_MK, weight_NK, z_MN = ctx.saved_tensors
        grad_z_MN = FUSED_MLP_KERNELS["backward"](grad_h_MN.to(z_MN.dtype).contiguous(), z_MN, ctx.negative_slope)
        return grad_z_MN @ weight_NK, grad_z_MN.t() @ x_MK, None


def load_fused_mlp_kernels() -> bool:
    """Import Triton, build the kernels and register them as ``pgolf::linear_sq_act_*`` custom ops (once)."""
    return load_kernel_set(FUSED_MLP_KERNELS, FUSED_MLP_BUILDS, _build_fused_mlp_ops)


def _matmul_launch_config(interpreting: bool) -> dict[str, int]:
    """Tile sizes: H100-friendly on a GPU, small (fast to emulate) under the interpreter."""
    if interpreting:  # the interpreter's tl.dot mishandles bf16 operands: it gets fp32 copies
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, GROUP_M=2, UPCAST_OPERANDS=True)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, UPCAST_OPERANDS=False, num_warps=8, num_stages=3)


def _build_fused_mlp_ops(interpreting: bool) -> dict[str, object]:
    import triton

    matmul_kernel, backward_kernel = _build_fused_mlp_triton_kernels()
    config = _matmul_launch_config(interpreting)
    suffix = "_interpreted" if interpreting else ""

    @torch.library.custom_op(f"pgolf::linear_sq_act_forward{suffix}", mutates_args=())
    def linear_sq_act_forward(x: torch.Tensor, weight: torch.Tensor,
                              negative_slope: float) -> tuple[torch.Tensor, torch.Tensor]:
        (M, K), N = x.shape, weight.size(0)
        z = torch.empty((M, N), dtype=x.dtype, device=x.device)
        h = torch.empty_like(z)
        grid = (triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"]),)
        if M and N:
            matmul_kernel[grid](x, weight, z, h, M, N, K, NEGATIVE_SLOPE=negative_slope, **config)
        return z, h

    @linear_sq_act_forward.register_fake
    def _(x, weight, negative_slope):
        shape = (x.size(0), weight.size(0))
        return x.new_empty(shape), x.new_empty(shape)

    @torch.library.custom_op(f"pgolf::linear_sq_act_backward{suffix}", mutates_args=())
    def linear_sq_act_backward(grad_h: torch.Tensor, z: torch.Tensor, negative_slope: float) -> torch.Tensor:
        grad_z = torch.empty_like(z)
        n = z.numel()
        if n:
            block = FUSED_MLP_ELEMENTWISE_BLOCK
            backward_kernel[(triton.cdiv(n, block),)](grad_h, z, grad_z, n, NEGATIVE_SLOPE=negative_slope, BLOCK=block)
        return grad_z

    @linear_sq_act_backward.register_fake
    def _(grad_h, z, negative_slope):
        return torch.empty_like(z)

    return {"forward": linear_sq_act_forward, "backward": linear_sq_act_backward}


def _build_fused_mlp_triton_kernels():
    """The matmul-with-activation kernel and the activation-gradient kernel (Triton imported here)."""
    import triton
    import triton.language as tl

    @triton.jit
    def linear_sq_act_kernel(x_ptr, w_ptr, z_ptr, h_ptr, M, N, K, NEGATIVE_SLOPE: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             GROUP_M: tl.constexpr, UPCAST_OPERANDS: tl.constexpr):
        # Grouped tile order: GROUP_M row-tiles share their columns' weight tiles while in L2.
        pid = tl.program_id(0)
        tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        tiles_per_group = GROUP_M * tiles_n
        first_m = (pid // tiles_per_group) * GROUP_M
        group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % tiles_per_group) % group_rows
        pid_n = (pid % tiles_per_group) // group_rows
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + ks
            a = tl.load(x_ptr + rows[:, None].to(tl.int64) * K + k[None, :],
                        mask=(rows[:, None] < M) & (k[None, :] < K), other=0.0)
            b = tl.load(w_ptr + cols[None, :].to(tl.int64) * K + k[:, None],
                        mask=(cols[None, :] < N) & (k[:, None] < K), other=0.0)
            if UPCAST_OPERANDS:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc += tl.dot(a, b)
        # Round z to the storage dtype first, as the eager path's fc output is rounded.
        z = acc.to(z_ptr.dtype.element_ty)
        zf = z.to(tl.float32)
        act = tl.where(zf > 0, zf, zf * NEGATIVE_SLOPE)
        offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        tl.store(z_ptr + offsets, z, mask=mask)
        tl.store(h_ptr + offsets, (act * act).to(h_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def sq_act_backward_kernel(grad_h_ptr, z_ptr, grad_z_ptr, n, NEGATIVE_SLOPE: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        g = tl.load(grad_h_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        # d/dz lrelu(z)^2 = 2 lrelu(z) lrelu'(z): 2z above zero, 2 slope^2 z below.
        slope_term = 2.0 * NEGATIVE_SLOPE * NEGATIVE_SLOPE
        derivative = tl.where(z > 0, 2.0 * z, slope_term * z)
        tl.store(grad_z_ptr + offsets, (g * derivative).to(grad_z_ptr.dtype.element_ty), mask=mask)

    return linear_sq_act_kernel, sq_act_backward_kernel
