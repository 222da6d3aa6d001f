"""LQER (SPEC 5.6): SVD factors, asymmetric / symmetric packing bounds, top-k selection, error reduction."""

import dataclasses

import pytest
import torch

from pgolf.config import QuantConfig
from pgolf.quant.artifact_quant import dequantize_from_artifact, quantize_for_artifact
from pgolf.quant.lqer import (LQER_B_GROUP_SIZE, lqer_factors, lqer_pack_asymmetric, lqer_pack_error,
                              lqer_pack_symmetric, lqer_select_targets, lqer_unpack)


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_factors_are_the_best_rank_r_approximation():
    e = randn((40, 30), 0).double()
    a, b = lqer_factors(e.float(), 4)
    assert a.shape == (40, 4) and b.shape == (4, 30)
    u, s, vh = torch.linalg.svd(e)  # float64 reference
    best = (u[:, :4] * s[:4]) @ vh[:4]
    torch.testing.assert_close((a @ b).double(), best, rtol=1e-4, atol=1e-5)
    assert lqer_factors(randn((3, 30), 1), 8)[0].shape == (3, 3)  # rank capped at min(rows, cols)


def test_asymmetric_packing_bounds_and_grouping():
    a, b = randn((50, 4), 2), randn((4, 70), 3)  # 280 elements of B: 4 full groups + one of 24
    b[2, 5] = 30.0  # an outlier raises one group's scale only
    packed = lqer_pack_asymmetric(a, b)
    assert packed["a"].dtype == torch.int8 and packed["b"].dtype == torch.int8
    assert int(packed["a"].min()) >= -2 and int(packed["a"].max()) <= 1
    assert int(packed["b"].min()) >= -8 and int(packed["b"].max()) <= 7
    assert packed["a_scale"].shape == () and packed["a_scale"].dtype == torch.float16
    assert packed["a_scale"].item() == pytest.approx(a.abs().max().item() / 1.5, rel=1e-3)
    flat = b.reshape(-1)
    groups = [flat[i:i + LQER_B_GROUP_SIZE] for i in range(0, flat.numel(), LQER_B_GROUP_SIZE)]
    expected_scales = torch.tensor([g.abs().max().item() / 7.5 for g in groups]).to(torch.float16)
    assert torch.equal(packed["b_scale"], expected_scales)
    a_hat, b_hat = lqer_unpack(packed, asymmetric=True)
    # Every element is within half a step of its group's scale, except +max|A| which [-2, 1] clips to 1 step.
    step_b = expected_scales.float().repeat_interleave(LQER_B_GROUP_SIZE)[:flat.numel()].view(b.shape)
    assert bool(((b_hat - b).abs() <= step_b / 2 * 1.001 + 1e-6).all())
    a_step = packed["a_scale"].float()
    assert bool(((a_hat - a).abs()[a <= a_step * 1.5] <= a_step / 2 * 1.001 + 1e-6).all())


def test_symmetric_packing_is_per_row_int4():
    a, b = randn((20, 4), 4), randn((4, 33), 5)
    packed = lqer_pack_symmetric(a, b)
    for key, x in (("a", a), ("b", b)):
        assert int(packed[key].abs().max()) <= 7
        assert torch.equal(packed[key + "_scale"], (x.abs().amax(dim=1) / 7).to(torch.float16))
    a_hat, b_hat = lqer_unpack(packed, asymmetric=False)
    assert bool(((a_hat - a).abs() <= packed["a_scale"].float()[:, None] / 2 * 1.001 + 1e-6).all())
    assert bool(((b_hat - b).abs() <= packed["b_scale"].float()[:, None] / 2 * 1.001 + 1e-6).all())


@pytest.mark.parametrize("asymmetric", [True, False])
def test_correction_reduces_a_low_rank_error(asymmetric):
    low_rank = randn((64, 3), 6) @ randn((3, 96), 7) * 0.1
    error = low_rank + 0.001 * randn((64, 96), 8)
    a_hat, b_hat = lqer_unpack(lqer_pack_error(error, 4, asymmetric), asymmetric)
    # 2-bit A with one scale is coarse (the records accept that for its size); int4 rows do better.
    assert torch.linalg.norm(error - a_hat @ b_hat) < (0.8 if asymmetric else 0.5) * torch.linalg.norm(error)


def test_zero_error_stays_zero():
    a_hat, b_hat = lqer_unpack(lqer_pack_error(torch.zeros(10, 70), 4, True), True)
    assert bool(torch.isfinite(a_hat @ b_hat).all()) and not (a_hat @ b_hat).any()


def test_select_targets_largest_first():
    norms = {"a": 1.0, "b": 3.0, "c": 2.0, "d": 3.0}
    assert lqer_select_targets(norms, 3) == ["b", "d", "c"]
    assert lqer_select_targets(norms, 0) == []


def test_quantize_for_artifact_corrects_the_worst_tensors():
    state = {f"blocks.{i}.mlp.fc.weight": randn((300, 256), 10 + i) * (0.02 * (i + 1)) for i in range(4)}
    base = QuantConfig(matrix_bits=4, clip_method="sdclip", matrix_clip_sigmas=3.0)
    plain_tensors, plain_meta = quantize_for_artifact(state, base)
    tensors, meta = quantize_for_artifact(state, dataclasses.replace(base, lqer_enabled=True, lqer_top_k=2, lqer_rank=4))
    corrected = [name for name, entry in meta["entries"].items() if "lqer" in entry]
    assert corrected == ["blocks.2.mlp.fc.weight", "blocks.3.mlp.fc.weight"]  # the largest weights err most
    assert meta["entries"][corrected[0]]["lqer"] == {"rank": 4, "asym": True}
    plain, fixed = dequantize_from_artifact(plain_tensors, plain_meta), dequantize_from_artifact(tensors, meta)
    for name in state:
        before, after = torch.linalg.norm(state[name] - plain[name]), torch.linalg.norm(state[name] - fixed[name])
        if name in corrected:
            assert after < before
        else:
            assert torch.equal(fixed[name], plain[name])
    assert {k for k in tensors if "lqer" in k} == {f"{n}.lqer_{p}" for n in corrected for p in ("a", "a_scale", "b", "b_scale")}
