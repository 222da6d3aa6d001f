"""GPTQ (SPEC 4.10) against a plain float64 sequential reference, and its claimed advantage over RTN."""

import pytest
import torch

from pgolf.errors import ConfigError
from pgolf.quant.gptq import gptq_quantize_matrix, gptq_upper_inverse_factor
from pgolf.quant.rtn import rtn_quantize_rows, sdclip_row_scales


def generator(seed):
    return torch.Generator().manual_seed(seed)


def correlated_inputs(tokens: int, columns: int, seed: int = 0) -> torch.Tensor:
    """Activations with strongly correlated features and very different scales, as in a real layer."""
    g = generator(seed)
    latent = torch.randn(tokens, columns // 4, generator=g)
    mixing = torch.randn(columns // 4, columns, generator=g)
    return latent @ mixing + 0.1 * torch.randn(tokens, columns, generator=g) * torch.rand(columns, generator=g) * 3


def reference_gptq(w, hessian, scale, bits, damping, act_order):
    """Column-by-column optimal-brain-quantiser updates with an explicit inverse Hessian, in float64.

    After quantising column j, the remaining columns move by ``err_j * Hinv[j, later] / Hinv[j, j]`` and
    column j is eliminated from Hinv (a rank-1 downdate) - mathematically the same as GPTQ's Cholesky form.
    """
    code_range = 2 ** (bits - 1) - 1
    w = w.double().clone()
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damping * torch.diagonal(h).mean() * torch.eye(len(h), dtype=torch.float64)
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(len(h))
    w, h_inv = w[:, order], torch.linalg.inv(h[order][:, order])
    s = scale.double()[:, None]
    codes = torch.zeros_like(w)
    for j in range(w.shape[1]):
        codes[:, j:j + 1] = torch.clamp(torch.round(w[:, j:j + 1] / s), -code_range, code_range)
        err = (w[:, j:j + 1] - codes[:, j:j + 1] * s) / h_inv[j, j]
        w[:, j + 1:] -= err * h_inv[j:j + 1, j + 1:]
        h_inv = h_inv - torch.outer(h_inv[:, j], h_inv[j, :]) / h_inv[j, j]
    return codes[:, torch.argsort(order)]


def output_error(x, w, codes, scale):
    return float(torch.linalg.norm(x.double() @ (w.double() - codes.double() * scale.double()[:, None]).T))


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("block_size", [128, 16, 7])
def test_matches_the_sequential_reference(act_order, block_size):
    x = correlated_inputs(800, 96, seed=1)
    w = torch.randn(40, 96, generator=generator(2)) * 0.05
    hessian = x.T @ x / 4
    scale = sdclip_row_scales(w, 4, 3.0)
    codes = gptq_quantize_matrix(w, hessian, scale, 4, damping=0.01, block_size=block_size, act_order=act_order)
    expected = reference_gptq(w, hessian, scale, 4, 0.01, act_order)
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    agreement = (codes.double() == expected).double().mean().item()
    assert agreement > 0.99  # fp32 vs fp64 may flip a code sitting exactly on a rounding boundary
    assert output_error(x, w, codes, scale) == pytest.approx(output_error(x, w, expected, scale), rel=0.02)


@pytest.mark.parametrize("bits", [4, 6])
def test_gptq_beats_round_to_nearest_at_the_same_scales(bits):
    x = correlated_inputs(2000, 128, seed=3)
    w = torch.randn(64, 128, generator=generator(4)) * 0.05
    rtn_codes, scale = rtn_quantize_rows("w", w, bits, "sdclip", 12.85 if bits == 6 else 4.0)
    gptq_codes = gptq_quantize_matrix(w, x.T @ x / 10, scale, bits)
    assert int(gptq_codes.abs().max()) <= 2 ** (bits - 1) - 1
    rtn_error, gptq_error = output_error(x, w, rtn_codes, scale), output_error(x, w, gptq_codes, scale)
    assert gptq_error < 0.8 * rtn_error, (gptq_error, rtn_error)


def test_identity_hessian_without_act_order_is_round_to_nearest():
    w = torch.randn(30, 50, generator=generator(5))
    rtn_codes, scale = rtn_quantize_rows("w", w, 6, "sdclip", 12.85)
    codes = gptq_quantize_matrix(w, torch.eye(50), scale, 6, act_order=False, block_size=8)
    assert torch.equal(codes, rtn_codes)


def test_dead_columns_get_zero_codes_and_match_the_reference():
    x = correlated_inputs(500, 64, seed=6)
    x[:, [3, 40]] = 0.0  # inputs that are always zero
    w = torch.randn(20, 64, generator=generator(7)) * 0.05
    hessian = x.T @ x
    scale = sdclip_row_scales(w, 6, 12.85)
    codes = gptq_quantize_matrix(w, hessian, scale, 6, block_size=16)
    assert not codes[:, [3, 40]].any()
    expected = reference_gptq(w, hessian, scale, 6, 0.01, True)
    assert (codes.double() == expected).double().mean().item() > 0.99


def test_upper_factor_inverts_the_hessian():
    x = correlated_inputs(300, 32, seed=8)
    h = x.T @ x / 300 + 0.5 * torch.eye(32)
    u = gptq_upper_inverse_factor(h)
    assert torch.equal(u, torch.triu(u))
    torch.testing.assert_close((u.T @ u).double(), torch.linalg.inv(h.double()), rtol=1e-4, atol=1e-6)


def test_bad_shapes_and_singular_hessian_fail_clearly():
    w = torch.randn(4, 8)
    with pytest.raises(ConfigError, match="Hessian"):
        gptq_quantize_matrix(w, torch.eye(7), torch.ones(4), 6)
    singular = torch.ones(8, 8)  # rank 1; no damping
    with pytest.raises(ConfigError, match="GPTQ_DAMPING"):
        gptq_quantize_matrix(w, singular, torch.ones(4), 6, damping=0.0)
