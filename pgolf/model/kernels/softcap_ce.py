"""Softcapped cross-entropy, fused forward and backward (SPEC 5.8; training only, ``FUSED_CROSS_ENTROPY=1``).

The eager path (``GPT.forward``) materialises ``z = c * tanh(x / c)`` in fp32 for every logit, then
log-softmax and its gradient: several passes over a (tokens x vocab) tensor. The fused path reads the
raw logits once per direction:

* forward, one program per row, streaming over the vocabulary in blocks with an online max/sum, gives
  ``lse`` and the loss ``lse - z[target]``; only ``lse`` (one float per row) is kept for backward;
* backward recomputes ``z`` and writes ``dL/dx = g * (softmax(z) - onehot) * dz/dx`` in the logits'
  dtype, where ``g`` is the incoming gradient of the row's loss.

It uses ``c * tanh(x / c) = 2c * sigmoid(2x / c) - c``: the constant ``-c`` cancels in the softmax, so
the kernels work with ``z' = 2c * sigmoid(2x / c)`` and ``dz/dx = 4 s (1 - s)`` with ``s = sigmoid(2x/c)``.

:func:`softcapped_cross_entropy` is the one entry point: the Triton kernels when Triton imports and the
logits are on CUDA, otherwise :func:`softcapped_cross_entropy_reference`, which is exactly the maths of
``GPT.forward`` (cap in fp32, ``F.cross_entropy``). Triton is imported lazily (it is optional; the
one-file export keeps these functions and runs the reference where Triton is missing). Under
``torch.compile`` call :func:`load_softcap_ce_kernels` once before compiling, so the kernels are
registered as custom ops outside the traced code; a compiled graph never tries to load them itself.
"""


import torch
import torch.nn.functional as F
from pgolf.model.kernels.loading import load_kernel_set

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
SOFTCAP_CE_EXPORT_SWITCH = "fused_cross_entropy"

# Filled once by load_softcap_ce_kernels(): the custom ops, or "error" with the reason Triton is unusable.
SOFTCAP_CE_KERNELS: dict[str, object] = {}
# Every build so far, by whether Triton's CPU interpreter (TRITON_INTERPRET=1) was on: tests run the
# kernels interpreted, and a later real build must not collide with their op names.
SOFTCAP_CE_BUILDS: dict[bool, dict[str, object]] = {}
# Rows are streamed in blocks of at most this many logits (a power of two, as tl.arange needs).
SOFTCAP_CE_MAX_BLOCK = 4096
CROSS_ENTROPY_IGNORE_INDEX = -100


def softcapped_cross_entropy_reference(logits_NV: torch.Tensor, targets_N: torch.Tensor, softcap: float,
                                       reduction: str = "mean") -> torch.Tensor:
    """``F.cross_entropy(softcap * tanh(logits / softcap))`` with the cap computed in fp32 (the eager maths)."""
    z_NV = softcap * torch.tanh(logits_NV.float() / softcap)
    return F.cross_entropy(z_NV, targets_N, reduction=reduction)


def softcapped_cross_entropy(logits_NV: torch.Tensor, targets_N: torch.Tensor, softcap: float,
                             reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the soft-capped logits: fused Triton kernels on CUDA, the eager reference elsewhere.

    ``logits_NV``: raw (uncapped) logits, any float dtype; ``targets_N``: int64 class ids (-100 = ignored,
    as ``F.cross_entropy``); ``reduction``: ``"mean"`` (over non-ignored rows), ``"sum"`` or ``"none"``.
    """
    if logits_NV.is_cuda and softcap_ce_kernels_ready():
        return softcapped_cross_entropy_fused(logits_NV, targets_N, softcap, reduction)
    return softcapped_cross_entropy_reference(logits_NV, targets_N, softcap, reduction)


def softcap_ce_kernels_ready() -> bool:
    """True when the Triton kernels are loaded; loads them on first use outside ``torch.compile``."""
    if not SOFTCAP_CE_KERNELS and not torch.compiler.is_compiling():
        load_softcap_ce_kernels()
    return "forward" in SOFTCAP_CE_KERNELS


def softcapped_cross_entropy_fused(logits_NV: torch.Tensor, targets_N: torch.Tensor, softcap: float,
                                   reduction: str = "mean", block_size: int = 0) -> torch.Tensor:
    """The Triton path on any device Triton runs on (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).

    ``block_size`` (a power of two, 0 = automatic) is the number of logits per streamed block.
    """
    if not softcap_ce_kernels_ready():
        raise RuntimeError(f"the fused cross-entropy kernels are unavailable: {SOFTCAP_CE_KERNELS.get('error')}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    block = block_size or min(SOFTCAP_CE_MAX_BLOCK, 1 << max(logits_NV.size(1) - 1, 1).bit_length())
    loss_N = SoftcappedCrossEntropyFunction.apply(logits_NV, targets_N, float(softcap), block)
    if reduction == "none":
        return loss_N
    if reduction == "sum":
        return loss_N.sum()
    return loss_N.sum() / (targets_N != CROSS_ENTROPY_IGNORE_INDEX).sum()


class SoftcappedCrossEntropyFunction(torch.autograd.Function):
    """Per-row loss (fp32, 0 for ignored rows) of soft-capped logits; backward recomputes the softmax."""

    @staticmethod
    def forward(ctx, logits_NV: torch.Tensor, targets_N: torch.Tensor, softcap: float, block: int) -> torch.Tensor:
        logits_NV = logits_NV.contiguous()
        targets_N = targets_N.contiguous()
        loss_N, lse_N = SOFTCAP_CE_KERNELS["forward"](logits_NV, targets_N, softcap, block)
        ctx.save_for_backward(logits_NV, targets_N, lse_N)
        ctx.softcap, ctx.block = softcap, block
        return loss_N

    @staticmethod
    def backward(ctx, grad_loss_N: torch.Tensor):
        logits_NV, targets_N, lse_N = ctx.saved_tensors
        grad_NV = SOFTCAP_CE_KERNELS["backward"](grad_loss_N.float().contiguous(), logits_NV, targets_N, lse_N,
                                                 ctx.softcap, ctx.block)
        return grad_NV, None, None, None


def load_softcap_ce_kernels() -> bool:
    """Import Triton, build the kernels and register them as ``pgolf::softcap_ce_*`` custom ops (once).

    Returns whether they are usable; on failure ``SOFTCAP_CE_KERNELS["error"]`` says why, and the
    reference path is used.
    """
    return load_kernel_set(SOFTCAP_CE_KERNELS, SOFTCAP_CE_BUILDS, _build_softcap_ce_ops)


def _build_softcap_ce_ops(interpreting: bool) -> dict[str, object]:
    forward_kernel, backward_kernel = _build_softcap_ce_triton_kernels()
    suffix = "_interpreted" if interpreting else ""

    @torch.library.custom_op(f"pgolf::softcap_ce_forward{suffix}", mutates_args=())
    def softcap_ce_forward(logits: torch.Tensor, targets: torch.Tensor, softcap: float,
                           block: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = logits.shape
        loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
        lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
        if rows:
            forward_kernel[(rows,)](logits, targets, loss, lse, cols, logits.stride(0), softcap,
                                    CROSS_ENTROPY_IGNORE_INDEX, BLOCK=block, num_warps=8 if block >= 2048 else 4)
        return loss, lse

    @softcap_ce_forward.register_fake
    def _(logits, targets, softcap, block):
        rows = logits.shape[0]
        return logits.new_empty(rows, dtype=torch.float32), logits.new_empty(rows, dtype=torch.float32)

    @torch.library.custom_op(f"pgolf::softcap_ce_backward{suffix}", mutates_args=())
    def softcap_ce_backward(grad_loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                            lse: torch.Tensor, softcap: float, block: int) -> torch.Tensor:
        rows, cols = logits.shape
        grad = torch.empty_like(logits)
        if rows:
            backward_kernel[(rows,)](grad_loss, logits, targets, lse, grad, cols, logits.stride(0), softcap,
                                     CROSS_ENTROPY_IGNORE_INDEX, BLOCK=block, num_warps=8 if block >= 2048 else 4)
        return grad

    @softcap_ce_backward.register_fake
    def _(grad_loss, logits, targets, lse, softcap, block):
        return torch.empty_like(logits)

    return {"forward": softcap_ce_forward, "backward": softcap_ce_backward}


def _build_softcap_ce_triton_kernels():
    """The two Triton kernels (defined here so that Triton is imported only when they are wanted)."""
    import triton
    import triton.language as tl

    @triton.jit
    def softcap_ce_forward_kernel(logits_ptr, targets_ptr, loss_ptr, lse_ptr, n_cols, row_stride, softcap,
                                  ignore_index, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * row_stride
        scale = 2.0 / softcap
        running_max = float("-inf")
        running_sum = 0.0
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            z = tl.where(mask, 2.0 * softcap * tl.sigmoid(x * scale), float("-inf"))
            new_max = tl.maximum(running_max, tl.max(z, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
            running_max = new_max
        lse = running_max + tl.log(running_sum)
        target = tl.load(targets_ptr + row)
        valid = target != ignore_index
        x_target = tl.load(row_ptr + tl.where(valid, target, 0)).to(tl.float32)
        z_target = 2.0 * softcap * tl.sigmoid(x_target * scale)
        tl.store(loss_ptr + row, tl.where(valid, lse - z_target, 0.0))
        tl.store(lse_ptr + row, lse)

    @triton.jit
    def softcap_ce_backward_kernel(grad_loss_ptr, logits_ptr, targets_ptr, lse_ptr, grad_ptr, n_cols, row_stride,
                                   softcap, ignore_index, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * row_stride
        grad_row_ptr = grad_ptr + row * row_stride
        target = tl.load(targets_ptr + row)
        # An ignored row gets a zero gradient whatever the incoming gradient says.
        g = tl.where(target != ignore_index, tl.load(grad_loss_ptr + row), 0.0)
        lse = tl.load(lse_ptr + row)
        scale = 2.0 / softcap
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            s = tl.sigmoid(x * scale)
            p = tl.exp(2.0 * softcap * s - lse)
            onehot = tl.where(cols == target, 1.0, 0.0)
            dx = g * (p - onehot) * (4.0 * s * (1.0 - s))
            tl.store(grad_row_ptr + cols, dx.to(grad_ptr.dtype.element_ty), mask=mask)

    return softcap_ce_forward_kernel, softcap_ce_backward_kernel
