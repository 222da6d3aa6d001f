"""Fused kernels (softcapped cross-entropy, squared-(Leaky)ReLU MLP) against plain references.

Two kinds of checks:

* the dispatchers on CPU take the eager path, which must be *bit-identical* to today's model maths
  (``GPT.forward``'s loss, ``block.MLP``), so switching the flags on changes nothing off-GPU;
* the Triton kernels themselves, run on CPU tensors by Triton's interpreter (``TRITON_INTERPRET=1``;
  skipped when Triton is not installed), against float64 maths written out here: values and gradients,
  ragged shapes that leave partial tiles/blocks, ignored targets, and bf16 storage.
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ModelConfig
from pgolf.model import block as block_module
from pgolf.model.gpt import GPT
from pgolf.model.kernels import fused_mlp as mlp_kernels
from pgolf.model.kernels import softcap_ce as ce_kernels
from pgolf.model.kernels.fused_mlp import (
    MLP_ACTIVATION_NEGATIVE_SLOPES, fused_linear_squared_activation, fused_mlp_forward, mlp_activation_reference,
)
from pgolf.model.kernels.softcap_ce import softcapped_cross_entropy, softcapped_cross_entropy_fused

SOFTCAP = 30.0


def ce_float64(logits, targets, softcap, reduction):
    """Soft-capped cross-entropy in float64, written plainly (log-sum-exp minus the target's logit)."""
    z = softcap * torch.tanh(logits.double() / softcap)
    valid = targets != -100
    lse = torch.logsumexp(z, dim=1)
    picked = z.gather(1, targets.clamp_min(0)[:, None])[:, 0]
    loss = torch.where(valid, lse - picked, torch.zeros_like(lse))
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / valid.sum()


def mlp_hidden_float64(x, weight, negative_slope):
    z = x.double() @ weight.double().T
    return torch.where(z > 0, z, negative_slope * z).square()


# ---- eager dispatch == today's maths (no Triton needed) ----

def test_ce_dispatch_on_cpu_equals_gpt_loss_bitwise():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2))
    x, y = torch.randint(0, 64, (2, 12)), torch.randint(0, 64, (2, 12))
    raw_logits = F.linear(model.forward_hidden(x), model.tok_emb.weight)
    for reduction in ("mean", "sum", "none"):
        fused = softcapped_cross_entropy(raw_logits.reshape(-1, 64), y.reshape(-1), SOFTCAP, reduction)
        eager = model(x, y, reduction=reduction)
        assert torch.equal(fused.view_as(eager), eager), reduction


@pytest.mark.parametrize("activation", sorted(MLP_ACTIVATION_NEGATIVE_SLOPES))
def test_mlp_dispatch_on_cpu_equals_block_mlp_bitwise(activation):
    torch.manual_seed(1)
    mlp = block_module.MLP(32, 2.0, activation)
    with torch.no_grad():
        mlp.proj.weight.normal_(0, 0.05)
    x = torch.randn(3, 5, 32, requires_grad=True)
    eager = mlp(x)
    fused = fused_mlp_forward(x, mlp.fc, mlp.proj, activation)
    assert torch.equal(fused, eager)
    z = torch.randn(1000) * 3
    assert torch.equal(mlp_activation_reference(z, MLP_ACTIVATION_NEGATIVE_SLOPES[activation]),
                       block_module.ACTIVATIONS[activation](z))


# ---- the Triton kernels, interpreted on CPU ----

def triton_imported_without_interpreter() -> bool:
    """Triton's interpreter must be on before Triton's first import (its language library is built
    then); importing torch._dynamo imports Triton when it is installed."""
    return "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"


def test_triton_kernels_in_a_fresh_process():
    """When this process imported Triton too early, run the kernel tests in a child that interprets."""
    if importlib.util.find_spec("triton") is None or torch.cuda.is_available():
        pytest.skip("no Triton, or a GPU (the kernel tests then run compiled, in this process)")
    if not triton_imported_without_interpreter():
        pytest.skip("the kernel tests run interpreted in this process")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "fused"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "skipped" not in child.stdout, child.stdout[-2000:]


@pytest.fixture(scope="module")
def kernel_device():
    """Where the Triton kernels run: compiled on CUDA when there is a GPU, else interpreted on the CPU
    (``TRITON_INTERPRET=1``). Loads both kernel sets and puts the previous load state back after."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    interpret = device.type == "cpu"
    if interpret and triton_imported_without_interpreter():
        pytest.skip("Triton was imported without TRITON_INTERPRET=1 (torch._dynamo imports it); "
                    "test_triton_kernels_in_a_fresh_process runs these tests instead")
    saved_env = os.environ.get("TRITON_INTERPRET")
    saved = {"ce": dict(ce_kernels.SOFTCAP_CE_KERNELS), "mlp": dict(mlp_kernels.FUSED_MLP_KERNELS)}
    if interpret:  # before Triton's first import: its language library is built interpreted or compiled then
        os.environ["TRITON_INTERPRET"] = "1"
    ce_kernels.SOFTCAP_CE_KERNELS.clear()
    mlp_kernels.FUSED_MLP_KERNELS.clear()
    try:
        assert ce_kernels.load_softcap_ce_kernels(), ce_kernels.SOFTCAP_CE_KERNELS.get("error")
        assert mlp_kernels.load_fused_mlp_kernels(), mlp_kernels.FUSED_MLP_KERNELS.get("error")
        yield device
    finally:
        ce_kernels.SOFTCAP_CE_KERNELS.clear()
        ce_kernels.SOFTCAP_CE_KERNELS.update(saved["ce"])
        mlp_kernels.FUSED_MLP_KERNELS.clear()
        mlp_kernels.FUSED_MLP_KERNELS.update(saved["mlp"])
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


def ce_inputs(rows=37, vocab=300, scale=20.0, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=gen) * scale).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    targets[3] = -100  # an ignored row
    return logits, targets


def leaf(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A detached copy on ``device`` that records its gradient."""
    return t.detach().to(device).requires_grad_()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_ce_matches_float64(kernel_device, reduction):
    logits, targets = ce_inputs()
    logits_fp32, logits_fp64 = leaf(logits, kernel_device), leaf(logits.double(), "cpu")
    # Block 128 over 300 columns: two full blocks and a ragged tail.
    loss = softcapped_cross_entropy_fused(logits_fp32, targets.to(kernel_device), SOFTCAP, reduction, block_size=128)
    reference = ce_float64(logits_fp64, targets, SOFTCAP, reduction)
    torch.testing.assert_close(loss.double().cpu(), reference, rtol=2e-6, atol=1e-6)
    weights = torch.randn(loss.shape, generator=torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad((loss * weights.to(kernel_device)).sum(), logits_fp32)
    (grad_reference,) = torch.autograd.grad((reference * weights.double()).sum(), logits_fp64)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad.double().cpu(), grad_reference, rtol=1e-5, atol=1e-7)
    assert torch.all(grad[3] == 0)  # the ignored row gets no gradient


def test_fused_ce_one_block_saturated_and_bf16(kernel_device):
    # Logits far beyond the cap (tanh saturates) in one block wider than the row.
    logits, targets = ce_inputs(rows=9, vocab=50, scale=300.0, seed=2)
    loss = softcapped_cross_entropy_fused(logits.to(kernel_device), targets.to(kernel_device), SOFTCAP, "mean")
    torch.testing.assert_close(loss.double().cpu(), ce_float64(logits, targets, SOFTCAP, "mean"), rtol=2e-6, atol=1e-6)
    # bf16 logits: read as bf16, computed in fp32, gradient written back in bf16.
    logits_bf16, targets = ce_inputs(rows=16, vocab=200, dtype=torch.bfloat16, seed=3)
    fused_input, exact = leaf(logits_bf16, kernel_device), leaf(logits_bf16.double(), "cpu")
    loss = softcapped_cross_entropy_fused(fused_input, targets.to(kernel_device), SOFTCAP, "sum", block_size=64)
    loss.backward()
    reference = ce_float64(exact, targets, SOFTCAP, "sum")
    reference.backward()
    torch.testing.assert_close(loss.double().cpu(), reference, rtol=2e-6, atol=1e-5)
    assert fused_input.grad.dtype == torch.bfloat16
    torch.testing.assert_close(fused_input.grad.double().cpu(), exact.grad, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("activation", sorted(MLP_ACTIVATION_NEGATIVE_SLOPES))
def test_fused_mlp_matches_float64(kernel_device, activation):
    slope = MLP_ACTIVATION_NEGATIVE_SLOPES[activation]
    # fp32 operands: exact products when interpreted; TF32 tensor cores (10-bit mantissa) on a GPU.
    tolerance = dict(rtol=1e-5, atol=1e-5) if kernel_device.type == "cpu" else dict(rtol=1e-2, atol=1e-2)
    gen = torch.Generator().manual_seed(7)
    # 2 x 19 = 38 rows, 48 inputs, 80 outputs: partial tiles along every dimension of the 16x32x16 tiling.
    x_cpu, w_cpu = torch.randn(2, 19, 48, generator=gen), torch.randn(80, 48, generator=gen) / 7
    x, weight = leaf(x_cpu, kernel_device), leaf(w_cpu, kernel_device)
    h = fused_linear_squared_activation(x, weight, slope)
    assert h.shape == (2, 19, 80)
    x64, w64 = leaf(x_cpu.double(), "cpu"), leaf(w_cpu.double(), "cpu")
    reference = mlp_hidden_float64(x64, w64, slope)
    torch.testing.assert_close(h.double().cpu(), reference, **tolerance)
    grad_h = torch.randn(h.shape, generator=gen)
    grad_x, grad_w = torch.autograd.grad((h * grad_h.to(kernel_device)).sum(), (x, weight))
    ref_x, ref_w = torch.autograd.grad((reference * grad_h.double()).sum(), (x64, w64))
    torch.testing.assert_close(grad_x.double().cpu(), ref_x, **tolerance)
    torch.testing.assert_close(grad_w.double().cpu(), ref_w, **tolerance)


def test_fused_mlp_fp16_storage_rounds_like_eager(kernel_device):
    # z is rounded to the storage dtype before the activation, so h equals the activation of the
    # (rounded) pre-activation the kernel saved, exactly as the eager path computes it.
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(20, 32, generator=gen).half()
    weight = (torch.randn(64, 32, generator=gen) / 6).half()
    z, h = mlp_kernels.FUSED_MLP_KERNELS["forward"](x.to(kernel_device), weight.to(kernel_device), 0.5)
    assert z.dtype == h.dtype == torch.float16
    assert torch.equal(h, mlp_activation_reference(z, 0.5))
    torch.testing.assert_close(z.double().cpu(), x.double() @ weight.double().T, rtol=2e-3, atol=2e-3)
