"""LQER: a low-rank correction of the worst-quantised matrices (SPEC 5.6).

After quantisation, the ``LQER_TOP_K`` tensors with the largest ``||W - W_hat||_F`` get a rank-``r``
truncated SVD of their error ``E = W - W_hat = U S V^T``: ``A = U_r S_r`` (rows x r) and ``B = V_r^T``
(r x cols). The factors are stored quantised, and the loaded weight is ``W_hat + A_hat B_hat``.

Packing (codes always in int8 containers, stored as extra tensors ``<name>.lqer_a|lqer_a_scale|lqer_b|
lqer_b_scale``):

* asymmetric (``LQER_ASYM``, the records' choice): A as 2-bit codes in [-2, 1] with ONE fp16 scale
  ``max|A| / 1.5``; B as 4-bit codes in [-8, 7] in groups of 64 consecutive elements of the flattened B
  (row-major; the last group may be shorter), one fp16 scale per group = ``group max|B| / 7.5``;
* symmetric fallback: per-row int4 (codes in [-7, 7], fp16 scale ``row max / 7``) for both A and B.

Scales are rounded to fp16 before quantising (the stored value is the one used); a zero scale is
lifted to the smallest fp16 subnormal so an all-zero factor stays zero instead of becoming 0/0.
"""

import math

import torch

from pgolf.quant.rtn import FP16_SMALLEST_SUBNORMAL

LQER_B_GROUP_SIZE = 64
LQER_SYMMETRIC_BITS = 4
LQER_TENSOR_SUFFIXES = (".lqer_a", ".lqer_a_scale", ".lqer_b", ".lqer_b_scale")


def lqer_factors(error_RC: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors ``A = U_r S_r`` and ``B = V_r^T`` of the error (rank capped at min(R, C))."""
    rank = min(rank, *error_RC.shape)
    u_RK, s_K, vh_KC = torch.linalg.svd(error_RC.to(torch.float32), full_matrices=False)
    return (u_RK[:, :rank] * s_K[:rank]).contiguous(), vh_KC[:rank].contiguous()


def _lqer_fp16_scale(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.float16).clamp_min(FP16_SMALLEST_SUBNORMAL)


def _lqer_codes(values: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> torch.Tensor:
    return torch.clamp(torch.round(values / scale.float()), low, high).to(torch.int8)


def _lqer_group_view(b_KC: torch.Tensor) -> torch.Tensor:
    """Flattened B cut into rows of 64, the last one zero-padded: (groups, 64)."""
    flat = b_KC.reshape(-1)
    groups = math.ceil(flat.numel() / LQER_B_GROUP_SIZE)
    padded = torch.zeros(groups * LQER_B_GROUP_SIZE, dtype=flat.dtype, device=flat.device)
    padded[:flat.numel()] = flat
    return padded.view(groups, LQER_B_GROUP_SIZE)


def lqer_pack_asymmetric(a_RK: torch.Tensor, b_KC: torch.Tensor) -> dict[str, torch.Tensor]:
    """A: 2-bit codes in [-2, 1], one scale; B: 4-bit codes in [-8, 7], a scale per 64-element group."""
    a_scale = _lqer_fp16_scale(a_RK.abs().max() / 1.5)
    groups_G64 = _lqer_group_view(b_KC)
    b_scale_G = _lqer_fp16_scale(groups_G64.abs().amax(dim=1) / 7.5)
    b_codes = _lqer_codes(groups_G64, b_scale_G[:, None], -8, 7).reshape(-1)[:b_KC.numel()].view(b_KC.shape)
    return {"a": _lqer_codes(a_RK, a_scale, -2, 1), "a_scale": a_scale,
            "b": b_codes.contiguous(), "b_scale": b_scale_G.contiguous()}


def _lqer_pack_rows(x_RC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    code_range = 2 ** (LQER_SYMMETRIC_BITS - 1) - 1
    scale_R = _lqer_fp16_scale(x_RC.abs().amax(dim=1) / code_range)
    return _lqer_codes(x_RC, scale_R[:, None], -code_range, code_range), scale_R


def lqer_pack_symmetric(a_RK: torch.Tensor, b_KC: torch.Tensor) -> dict[str, torch.Tensor]:
    """A and B each as per-row int4 codes in [-7, 7] with fp16 row scales."""
    a_codes, a_scale = _lqer_pack_rows(a_RK)
    b_codes, b_scale = _lqer_pack_rows(b_KC)
    return {"a": a_codes, "a_scale": a_scale, "b": b_codes, "b_scale": b_scale}


def lqer_unpack(packed: dict[str, torch.Tensor], asymmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The dequantised factors (A_hat, B_hat) in fp32."""
    if asymmetric:
        a_hat = packed["a"].float() * packed["a_scale"].float()
        scale_per_element = packed["b_scale"].float().repeat_interleave(LQER_B_GROUP_SIZE)[:packed["b"].numel()]
        b_hat = packed["b"].float() * scale_per_element.view(packed["b"].shape)
        return a_hat, b_hat
    return (packed["a"].float() * packed["a_scale"].float()[:, None],
            packed["b"].float() * packed["b_scale"].float()[:, None])


def lqer_pack_error(error_RC: torch.Tensor, rank: int, asymmetric: bool) -> dict[str, torch.Tensor]:
    """Factor the quantisation error and pack the factors (CPU tensors, ready to store)."""
    a_RK, b_KC = lqer_factors(error_RC, rank)
    packed = lqer_pack_asymmetric(a_RK, b_KC) if asymmetric else lqer_pack_symmetric(a_RK, b_KC)
    return {key: value.cpu().contiguous() for key, value in packed.items()}


def lqer_select_targets(error_norms: dict[str, float], top_k: int) -> list[str]:
    """Names of the ``top_k`` largest errors, largest first (ties broken by name for determinism)."""
    ranked = sorted(error_norms, key=lambda name: (-error_norms[name], name))
    return ranked[:max(top_k, 0)]
