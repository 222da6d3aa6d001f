"""FP8 matmuls in CastedLinear (FP8_MATMUL=1): the scaling maths on CPU, and "off" changes nothing.

The e4m3 rounding is checked against a grid written out here (3 mantissa bits, exponents down to
2^-6, subnormal step 2^-9, round half to even), the scaled matmul against the float64 product of the
dequantised operands, and its error against the plain product (bounded: e4m3 keeps ~2 significant
digits). The CUDA path itself is measured by bench/fp8_accuracy.py on a GPU.
"""

import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT
from pgolf.model.layers import (
    FP8_E4M3_MAX, CastedLinear, enable_fp8_matmul, fp8_e4m3_per_tensor, fp8_eligible_linear, fp8_linear,
)

HAS_CPU_SCALED_MM = True
try:
    torch._scaled_mm(torch.zeros(16, 16).to(torch.float8_e4m3fn), torch.zeros(16, 16).to(torch.float8_e4m3fn).t(),
                     scale_a=torch.tensor(1.0), scale_b=torch.tensor(1.0), out_dtype=torch.float32)
except (AttributeError, RuntimeError, NotImplementedError):
    HAS_CPU_SCALED_MM = False
needs_cpu_scaled_mm = pytest.mark.skipif(not HAS_CPU_SCALED_MM, reason="this torch has no CPU torch._scaled_mm")


def e4m3_round(v: torch.Tensor) -> torch.Tensor:
    """Round float64 values (|v| <= 448) to the nearest float8 e4m3fn value, ties to even."""
    magnitude = v.abs()
    exponent = torch.floor(torch.log2(magnitude.clamp_min(2.0 ** -6)))  # below 2^-6: the subnormal step
    step = 2.0 ** (exponent - 3)
    return torch.round(v / step) * step  # torch.round is half-to-even


def test_e4m3_cast_matches_the_written_out_grid():
    v = torch.cat([torch.linspace(-448, 448, 20001, dtype=torch.float64), torch.randn(5000, dtype=torch.float64) / 50])
    assert torch.equal(v.float().to(torch.float8_e4m3fn).double(), e4m3_round(v))


def test_per_tensor_scaling_uses_the_whole_range():
    t = torch.randn(64, 48) * 3.7
    t_fp8, inverse_scale = fp8_e4m3_per_tensor(t)
    scale = FP8_E4M3_MAX / t.abs().max().double()
    assert t_fp8.dtype == torch.float8_e4m3fn
    assert t_fp8.float().abs().max().item() == FP8_E4M3_MAX  # amax lands exactly on 448
    assert torch.equal(t_fp8.double(), e4m3_round((t.double() * scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)))
    torch.testing.assert_close(inverse_scale.double(), 1 / scale, rtol=1e-6, atol=0)
    # Every normal value keeps 3 mantissa bits: relative error <= 2^-4 after dequantisation.
    dequantised = t_fp8.double() * inverse_scale.double()
    normal = (t.double() * scale).abs() >= 2.0 ** -6
    assert ((dequantised - t.double()).abs() <= 2.0 ** -4 * t.double().abs())[normal].all()


@needs_cpu_scaled_mm
def test_fp8_linear_is_the_scaled_product_and_close_to_the_plain_one():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 64, generator=gen)
    weight = torch.randn(96, 64, generator=gen) / 8
    out = fp8_linear(x, weight)
    assert out.shape == (3, 10, 96) and out.dtype == torch.float32
    x_fp8, x_inv = fp8_e4m3_per_tensor(x.reshape(-1, 64))
    w_fp8, w_inv = fp8_e4m3_per_tensor(weight)
    simulated = (x_fp8.double() * x_inv.double()) @ (w_fp8.double() * w_inv.double()).T
    torch.testing.assert_close(out.reshape(-1, 96).double(), simulated, rtol=1e-5, atol=1e-5)
    exact = x.double() @ weight.double().T
    relative = ((out.double() - exact).norm() / exact.norm()).item()
    assert 1e-4 < relative < 0.06, relative  # really quantised, and only by e4m3's precision


@needs_cpu_scaled_mm
def test_fp8_backward_is_the_plain_matmul_gradient():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 32, generator=gen, requires_grad=True)
    weight = torch.randn(48, 32, generator=gen, requires_grad=True)
    grad_out = torch.randn(20, 48, generator=gen)
    grad_x, grad_w = torch.autograd.grad((fp8_linear(x, weight) * grad_out).sum(), (x, weight))
    torch.testing.assert_close(grad_x.double(), grad_out.double() @ weight.detach().double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_w.double(), grad_out.double().T @ x.detach().double(), rtol=1e-5, atol=1e-5)


def test_fp8_off_and_cpu_forward_are_bit_identical_to_f_linear():
    torch.manual_seed(2)
    linear = CastedLinear(64, 32)
    x = torch.randn(4, 64)
    assert not linear.fp8_matmul
    assert torch.equal(linear(x), F.linear(x, linear.weight))
    linear.fp8_matmul = True  # flagged, but the input is on the CPU: the normal path, unchanged
    assert torch.equal(linear(x), F.linear(x, linear.weight))


def test_enable_fp8_matmul_reports_unavailable_on_cpu_and_selects_block_linears():
    torch.manual_seed(3)
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=128, num_heads=4, num_kv_heads=2))
    line = enable_fp8_matmul(model, torch.device("cpu"))
    assert line.startswith("fp8_matmul:unavailable") and "not CUDA" in line
    assert not any(getattr(module, "fp8_matmul", False) for module in model.modules())
    eligible = sorted(name for name, module in model.named_modules() if fp8_eligible_linear(name, module))
    # q, k, v, out-proj and both MLP linears of both blocks (kv dim 64 < 128 keeps c_k / c_v out).
    assert eligible == sorted(f"blocks.{i}.{part}" for i in range(2)
                              for part in ("attn.c_q", "attn.proj", "mlp.fc", "mlp.proj"))
