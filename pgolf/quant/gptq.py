"""Full-Hessian GPTQ of one weight matrix (SPEC 4.10), with scales chosen beforehand (SDClip or other).

GPTQ quantises the columns of ``W`` (rows = output features, columns = input features) one at a time
and pushes each column's rounding error onto the columns not yet quantised, weighted by the inverse
Hessian ``H = E[x x^T]`` of the layer inputs, so the layer *output* error ``||X W^T - X W_hat^T||`` is
minimised rather than the weight error. Steps, exactly as the records do them:

1. dead columns (``H_jj = 0``: an input that is always zero) get ``H_jj = 1`` and zero weights;
2. damping: ``H += damping * mean(diag H) * I``;
3. act-order: columns sorted by descending ``diag H`` with torch's default (unstable) sort, as the record
   does; W and H permuted, inverse permutation kept;
4. ``U`` = upper Cholesky factor of ``H^-1`` (Cholesky of H -> cholesky_inverse -> upper Cholesky);
5. blocks of ``block_size`` columns; for column j of a block: ``q = clamp(round(w_j / s), -R, R)``,
   ``e = (w_j - q s) / U_jj``, the block's later columns ``-= e U[j, j:]``; after the block, the later
   columns ``-= Err_block @ U[block, later]``;
6. codes returned in the original column order.

The row scales ``s`` are an input (:func:`pgolf.quant.rtn.rtn_row_scales`; SPEC: SDClip from the
*original* rows), so GPTQ and round-to-nearest can be compared at identical scales. All maths is fp32 on
the device of the Hessian (CPU in tests, CUDA in runs). The float operations are the record's, in its
order, so with the same Hessian and scales the codes are the record's bit for bit
(``tests/parity/test_reference_parity.py``).
"""

import torch

from pgolf.errors import ConfigError
from pgolf.quant.rtn import rtn_code_range

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
GPTQ_EXPORT_SWITCH = "quant_method == 'gptq'"


def _gptq_prepare(w_RC: torch.Tensor, hessian_CC: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 copies of W and H with dead columns neutralised and the damping added (steps 1-2)."""
    w_RC = w_RC.to(device=hessian_CC.device, dtype=torch.float32).clone()
    h_CC = hessian_CC.to(torch.float32).clone()
    dead_C = torch.diagonal(h_CC) == 0
    h_CC[dead_C, dead_C] = 1.0
    w_RC[:, dead_C] = 0.0
    # The mean of a contiguous copy of the diagonal (torch.diag), as the record takes it: a mean over
    # the strided diagonal view sums in another order and can differ in the last bit.
    damp = damping * torch.diag(h_CC).mean()
    columns_C = torch.arange(h_CC.shape[0], device=h_CC.device)
    h_CC[columns_C, columns_C] += damp
    return w_RC, h_CC


def gptq_upper_inverse_factor(h_CC: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """Upper-triangular ``U`` with ``U^T U = H^-1`` (step 4); ConfigError if H is not positive definite."""
    lower, info = torch.linalg.cholesky_ex(h_CC)
    if int(info) != 0:
        raise ConfigError(
            f"GPTQ Hessian of {name!r} is not positive definite even after damping; raise GPTQ_DAMPING "
            "(default 0.01) or use more calibration batches (GPTQ_CALIBRATION_BATCHES)."
        )
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def _gptq_quantize_block(w_RB: torch.Tensor, u_BB: torch.Tensor, scale_R1: torch.Tensor,
                         code_range: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise one block of columns in place order; return (codes, scaled errors) of the block (step 5)."""
    q_RB = torch.zeros_like(w_RB)
    err_RB = torch.zeros_like(w_RB)
    for j in range(w_RB.shape[1]):
        column_R1 = w_RB[:, j:j + 1]
        codes_R1 = torch.clamp(torch.round(column_R1 / scale_R1), -code_range, code_range)
        q_RB[:, j:j + 1] = codes_R1
        err_R1 = (column_R1 - codes_R1 * scale_R1) / u_BB[j, j]
        w_RB[:, j:] -= err_R1 * u_BB[j:j + 1, j:]
        err_RB[:, j:j + 1] = err_R1
    return q_RB, err_RB


def gptq_quantize_matrix(
    w_RC: torch.Tensor,
    hessian_CC: torch.Tensor,
    scale_R: torch.Tensor,
    bits: int,
    *,
    damping: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
    name: str = "tensor",
) -> torch.Tensor:
    """GPTQ codes (int8 holding values in [-R, R], original column order) of ``w_RC`` at ``scale_R``.

    ``hessian_CC`` is ``X^T X / n`` over calibration inputs (C = columns of W); ``scale_R`` the per-row
    scales actually stored (fp16 values; used in fp32). The result is on the Hessian's device.
    """
    rows, columns = w_RC.shape
    if tuple(hessian_CC.shape) != (columns, columns) or tuple(scale_R.shape) != (rows,):
        raise ConfigError(
            f"GPTQ of {name!r}: weight {tuple(w_RC.shape)} needs a ({columns}, {columns}) Hessian and {rows} "
            f"scales, got {tuple(hessian_CC.shape)} and {tuple(scale_R.shape)}; the Hessian belongs to another layer."
        )
    code_range = rtn_code_range(bits)
    w_RC, h_CC = _gptq_prepare(w_RC, hessian_CC, damping)
    # The record's default (unstable) sort, so tied diagonals (dead columns: all 1 + damp) come out in its order.
    order_C = torch.argsort(torch.diag(h_CC), descending=True) if act_order else torch.arange(
        columns, device=h_CC.device)
    w_RC = w_RC[:, order_C]
    u_CC = gptq_upper_inverse_factor(h_CC[order_C][:, order_C], name)
    scale_R1 = scale_R.to(device=h_CC.device, dtype=torch.float32)[:, None]
    q_RC = torch.zeros_like(w_RC)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        q_RC[:, start:end], err_RB = _gptq_quantize_block(w_RC[:, start:end], u_CC[start:end, start:end],
                                                          scale_R1, code_range)
        w_RC[:, end:] -= err_RB @ u_CC[start:end, end:]
    inverse_order_C = torch.argsort(order_C)
    return q_RC[:, inverse_order_C].to(torch.int8).contiguous()
