"""Baseline per-row int8 quantisation (SPEC 2.9): routing, exact codes, error bounds, dtypes."""

import json

import pytest
import torch

import pgolf.quant.rtn as rtn
from pgolf.errors import ArtifactError, ConfigError
from pgolf.quant.rtn import (
    INT8_CLIP_QUANTILE,
    PASSTHROUGH_MAX_NUMEL,
    dequantize_state_dict_int8,
    quantize_state_dict_int8,
    rtn_row_quantile,
)


def gaussian(shape, seed=0, std=0.05, dtype=torch.float32):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std).to(dtype)


def reference_per_row(w: torch.Tensor):
    """Row-by-row restatement of SPEC 2.9: codes from the fp32 scale, which is stored as fp16 afterwards."""
    codes, scales = [], []
    for row in w.float():
        clip = torch.quantile(row.abs(), INT8_CLIP_QUANTILE)
        scale = torch.clamp(clip / 127, min=1 / 127)
        codes.append(torch.clamp(torch.round(torch.clamp(row, -clip, clip) / scale), -127, 127))
        scales.append(scale.half())
    return torch.stack(codes).to(torch.int8), torch.stack(scales)


def test_constants():
    assert INT8_CLIP_QUANTILE == 0.9999984
    assert PASSTHROUGH_MAX_NUMEL == 65_536


def test_per_row_codes_and_scales_match_the_reference():
    w = gaussian((300, 301), std=3.0)  # std 3 so that most rows have clip > 1 (scale not floored)
    w[5, 7] = 40.0  # an outlier that gets clipped
    tensors, meta = quantize_state_dict_int8({"w": w}, ())
    expected_q, expected_scale = reference_per_row(w)
    assert meta["entries"]["w"] == {"scheme": "int8_per_row", "dtype": "float32"}
    assert tensors["w.q"].dtype == torch.int8 and tensors["w.scale"].dtype == torch.float16
    assert torch.equal(tensors["w.q"], expected_q)
    assert torch.equal(tensors["w.scale"], expected_scale)


def test_per_row_error_is_half_a_step_plus_the_fp16_scale_rounding_for_unclipped_weights():
    """Codes come from the fp32 scale s32, dequantisation uses its fp16 rounding s16, with
    |s32 - s16| <= 2^-11 s16: |w - q s16| <= s32 / 2 + |q| |s32 - s16| <= s16 (1/2 + (|q| + 1/2) 2^-11)."""
    w = gaussian((256, 512), seed=1, std=2.0)
    w[:, 0] *= 50  # force one clipped weight per row
    w[3] *= 0.001  # a row of tiny weights: the scale floors at 1/127
    tensors, meta = quantize_state_dict_int8({"w": w}, ())
    restored = dequantize_state_dict_int8(tensors, meta)["w"]
    scale = tensors["w.scale"].float()[:, None]
    clip = rtn_row_quantile(w.abs(), INT8_CLIP_QUANTILE)[:, None]
    unclipped = w.abs() <= clip
    error = (w - restored).abs()
    codes = tensors["w.q"].float()
    bound = scale * (0.5 + (codes.abs() + 0.5) * 2.0 ** -11) * (1 + 1e-6)
    assert bool((error[unclipped] <= bound[unclipped]).all())
    assert bool((restored.abs() <= clip + scale / 2 + 1e-6).all())  # clipped ones land at the clip
    assert unclipped.sum() < w.numel()  # the clipping branch was exercised
    assert tensors["w.scale"][3].item() == pytest.approx(1 / 127, rel=1e-3)


def test_passthrough_rules():
    state = {
        "small_fp32": gaussian((64, 64)),
        "small_bf16": gaussian((10,), dtype=torch.bfloat16),
        "blocks.0.attn_scale": gaussian((512,), dtype=torch.bfloat16),
        "boundary": gaussian((PASSTHROUGH_MAX_NUMEL,)),
        "step": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
        "big_ids": torch.arange(100_000, dtype=torch.int32),
    }
    tensors, meta = quantize_state_dict_int8(state, ("attn_scale", "q_gain"))
    stored_dtypes = {name: tensors[name].dtype for name in state}
    assert stored_dtypes == {
        "small_fp32": torch.float16,
        "small_bf16": torch.float16,
        "blocks.0.attn_scale": torch.float32,
        "boundary": torch.float16,
        "step": torch.int64,
        "mask": torch.bool,
        "big_ids": torch.int32,
    }
    assert all(entry["scheme"] == "passthrough" for entry in meta["entries"].values())
    restored = dequantize_state_dict_int8(tensors, meta)
    for name, original in state.items():
        assert restored[name].dtype == original.dtype, name
    assert torch.equal(restored["blocks.0.attn_scale"], state["blocks.0.attn_scale"])  # bf16 -> fp32 is exact
    assert torch.equal(restored["small_fp32"], state["small_fp32"].half().float())
    for name in ("step", "mask", "big_ids"):
        assert torch.equal(restored[name], state[name])


def test_one_element_over_the_limit_is_quantised():
    tensors, meta = quantize_state_dict_int8({"v": gaussian((PASSTHROUGH_MAX_NUMEL + 1,))}, ())
    assert meta["entries"]["v"]["scheme"] == "int8_per_tensor"
    assert set(tensors) == {"v.q", "v.scale"}


def test_per_tensor_path_for_non_matrices():
    w = gaussian((4, 130, 130), seed=2)
    tensors, meta = quantize_state_dict_int8({"conv": w}, ())
    assert meta["entries"]["conv"] == {"scheme": "int8_per_tensor", "dtype": "float32"}
    clip = torch.quantile(w.abs().flatten(), INT8_CLIP_QUANTILE)
    assert tensors["conv.scale"].dtype == torch.float32 and tensors["conv.scale"].shape == ()
    assert tensors["conv.scale"].item() == pytest.approx((clip / 127).item(), rel=1e-6)
    expected_q = torch.clamp(torch.round(torch.clamp(w, -clip, clip) / (clip / 127)), -127, 127).to(torch.int8)
    assert torch.equal(tensors["conv.q"], expected_q)
    restored = dequantize_state_dict_int8(tensors, meta)["conv"]
    unclipped = w.abs() <= clip
    assert bool(((w - restored).abs()[unclipped] <= clip / 127 / 2 * (1 + 1e-5)).all())


def test_per_tensor_all_zero_uses_scale_one():
    tensors, meta = quantize_state_dict_int8({"z": torch.zeros(70_000)}, ())
    assert tensors["z.scale"].item() == 1.0 and not tensors["z.q"].any()
    assert torch.equal(dequantize_state_dict_int8(tensors, meta)["z"], torch.zeros(70_000))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_large_tensor_dtype_is_restored(dtype):
    w = gaussian((300, 300), dtype=dtype, std=1.0)
    tensors, meta = quantize_state_dict_int8({"w": w}, ())
    assert meta["entries"]["w"]["dtype"] == str(dtype).removeprefix("torch.")
    restored = dequantize_state_dict_int8(tensors, meta)["w"]
    assert restored.dtype == dtype
    assert (restored.float() - w.float()).abs().max() < 0.02


def test_meta_is_json_and_order_is_kept():
    state = {"b": gaussian((3,)), "a": gaussian((300, 300)), "c": torch.tensor(1)}
    tensors, meta = quantize_state_dict_int8(state, ())
    assert json.loads(json.dumps(meta)) == meta
    assert list(dequantize_state_dict_int8(tensors, meta)) == ["b", "a", "c"]


def test_row_quantile_matches_torch_in_chunks_and_via_kthvalue(monkeypatch):
    x = gaussian((37, 101), seed=3).abs()
    expected = torch.quantile(x, INT8_CLIP_QUANTILE, dim=1)
    assert torch.equal(rtn_row_quantile(x, INT8_CLIP_QUANTILE), expected)
    monkeypatch.setattr(rtn, "TORCH_QUANTILE_MAX_NUMEL", 500)  # chunks of 4 rows
    assert torch.equal(rtn_row_quantile(x, INT8_CLIP_QUANTILE), expected)
    monkeypatch.setattr(rtn, "TORCH_QUANTILE_MAX_NUMEL", 50)  # rows too long: kthvalue fallback
    for q in (INT8_CLIP_QUANTILE, 0.5, 0.0, 1.0, 0.123):
        torch.testing.assert_close(rtn_row_quantile(x, q), torch.quantile(x, q, dim=1), rtol=1e-6, atol=0)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ConfigError, match="tuple"):
        quantize_state_dict_int8({"w": gaussian((3,))}, "attn_scale")
    bad = gaussian((300, 300))
    bad[0, 0] = float("nan")
    with pytest.raises(ArtifactError, match="NaN"):
        quantize_state_dict_int8({"w": bad}, ())
    with pytest.raises(ArtifactError, match="collides"):
        quantize_state_dict_int8({"w": gaussian((300, 300)), "w.q": gaussian((3,))}, ())
    tensors, meta = quantize_state_dict_int8({"w": gaussian((300, 300))}, ())
    with pytest.raises(ArtifactError, match="format"):
        dequantize_state_dict_int8(tensors, {"format": "int8_clean_per_row_v1", "entries": {}})
    with pytest.raises(ArtifactError, match="w.scale"):
        dequantize_state_dict_int8({"w.q": tensors["w.q"]}, meta)
    with pytest.raises(ArtifactError, match="do not match"):
        dequantize_state_dict_int8({"w.q": tensors["w.q"], "w.scale": tensors["w.scale"][:5]}, meta)
    with pytest.raises(ArtifactError, match="unknown quantisation scheme"):
        dequantize_state_dict_int8(tensors, {"format": meta["format"], "entries": {"w": {"scheme": "int4", "dtype": "float32"}}})
