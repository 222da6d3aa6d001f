"""Round-to-nearest int-N per row: code ranges, half-step error, SDClip and absmax scale formulas."""

import pytest
import torch

from pgolf.errors import ArtifactError, ConfigError
from pgolf.quant.rtn import (INT8_CLIP_QUANTILE, rtn_code_range, rtn_quantize_rows, rtn_row_scales,
                             sdclip_row_scales)


def gaussian(shape, seed=0, std=0.05):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


@pytest.mark.parametrize("bits,expected", [(2, 1), (4, 7), (6, 31), (7, 63), (8, 127)])
def test_code_range(bits, expected):
    assert rtn_code_range(bits) == expected


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_out_of_range(bits):
    with pytest.raises(ConfigError, match="between 2 and 8"):
        rtn_code_range(bits)


def reference_sdclip_scales(w: torch.Tensor, bits: int, k: float) -> torch.Tensor:
    """float64, row by row: s_r = k * unbiased std / R, clamp >= 1e-10, then fp16."""
    code_range = 2 ** (bits - 1) - 1
    scales = []
    for row in w.double():
        mean = row.sum() / len(row)
        std = (((row - mean) ** 2).sum() / (len(row) - 1)).sqrt()
        scales.append(max(float(k * std / code_range), 1e-10))
    return torch.tensor(scales, dtype=torch.float64).to(torch.float16)


@pytest.mark.parametrize("bits,k", [(6, 12.85), (7, 15.0), (8, 20.0), (4, 3.0)])
def test_sdclip_scale_formula(bits, k):
    w = gaussian((50, 301), seed=bits) * torch.linspace(0.1, 3.0, 50)[:, None]  # rows of different spread
    scales = sdclip_row_scales(w, bits, k)
    assert scales.dtype == torch.float16
    assert torch.equal(scales, reference_sdclip_scales(w, bits, k))
    assert torch.equal(rtn_row_scales(w, bits, "sdclip", k), scales)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
@pytest.mark.parametrize("clip", ["sdclip", "percentile", "absmax"])
def test_codes_in_range_and_half_step_error_for_unclipped(bits, clip):
    w = gaussian((64, 257), seed=bits, std=0.5)
    w[3, 5] = 40.0  # an outlier: clipped by sdclip / percentile
    q, scale = rtn_quantize_rows("w", w, bits, clip, k=4.0)
    code_range = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and scale.dtype == torch.float16
    assert int(q.min()) >= -code_range and int(q.max()) <= code_range
    step = scale.double()[:, None]
    restored = q.double() * step
    # Unclipped = inside the representable range of the stored fp16 scale (and, for percentile, the clip).
    unclipped = w.double().abs() <= code_range * step
    if clip == "percentile":
        unclipped &= w.abs() <= torch.quantile(w.abs(), INT8_CLIP_QUANTILE, dim=1)[:, None]
    error = (w.double() - restored).abs()
    bound = (step / 2 * (1 + 1e-6)).expand_as(w)
    if clip == "percentile":  # codes from the fp32 scale s32, |s32 - s16| <= 2^-11 s16 (test_quant_rtn.py)
        bound = step * (0.5 + (q.double().abs() + 0.5) * 2.0 ** -11) * (1 + 1e-6)
    assert bool((error[unclipped] <= bound[unclipped]).all())
    assert unclipped.float().mean() > 0.95  # the bound covered nearly every weight


def test_sdclip_saturates_at_k_sigmas():
    w = gaussian((4, 1000), seed=3)
    w[0, 0] = 10.0
    q, scale = rtn_quantize_rows("w", w, 6, "sdclip", k=3.0)
    assert int(q[0, 0]) == 31  # the outlier lands on +R
    assert scale[0].item() == pytest.approx(3.0 * w[0].std().item() / 31, rel=1e-3)


def test_absmax_scale_is_row_max_over_r():
    w = gaussian((8, 12), seed=4)
    scale = rtn_row_scales(w, 8, "absmax")
    assert torch.equal(scale, (w.abs().amax(dim=1).double() / 127).to(torch.float16))
    q, _ = rtn_quantize_rows("gate", w, 8, "absmax")
    assert bool((q.abs().amax(dim=1) >= 126).all())  # each row's largest weight uses (almost) the full range


def test_percentile_int6_uses_r31_and_the_baseline_floor():
    w = gaussian((10, 400), seed=5, std=3.0)
    q, scale = rtn_quantize_rows("w", w, 6, "percentile")
    clip = torch.quantile(w.abs(), INT8_CLIP_QUANTILE, dim=1)
    assert torch.equal(scale, torch.clamp(clip / 31, min=1 / 127).to(torch.float16))
    tiny = rtn_row_scales(gaussian((2, 400), std=1e-4), 6, "percentile")
    assert torch.equal(tiny, torch.full((2,), 1 / 127).to(torch.float16))


def test_all_zero_and_one_column_rows_stay_finite():
    w = torch.zeros(3, 5)
    w[1] = gaussian((5,), seed=6)
    q, scale = rtn_quantize_rows("w", w, 6, "sdclip", k=12.85)
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    assert not q[0].any() and not q[2].any()
    q1, scale1 = rtn_quantize_rows("col", gaussian((4, 1), seed=7), 6, "sdclip", k=12.85)
    assert bool((scale1 > 0).all()) and bool(torch.isfinite(scale1).all())


def test_huge_weights_and_unknown_clip_fail_clearly():
    with pytest.raises(ArtifactError, match="fp16"):
        rtn_quantize_rows("w", gaussian((4, 100)) * 1e9, 6, "sdclip", k=12.85)
    with pytest.raises(ConfigError, match="clip method"):
        rtn_row_scales(gaussian((4, 100)), 6, "minmax")
