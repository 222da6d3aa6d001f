"""FUSED_CROSS_ENTROPY, FUSED_MLP and FP8_MATMUL as a run uses them: on CPU each flag keeps the eager
maths, so training with the flags on equals training with them off, bit for bit; FP8 says why it is off."""

import dataclasses

import torch

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT
from pgolf.model.layers import enable_fp8_matmul

CFG = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, activation="leaky_relu2")


def loss_and_grads(cfg: ModelConfig, ids: torch.Tensor, targets: torch.Tensor):
    torch.manual_seed(0)
    model = GPT(cfg).train()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and p.abs().sum() == 0:
                p.normal_(0, 0.1)  # zero-init projections would hide the MLP path
    loss = model(ids, targets)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_fused_flags_on_cpu_train_exactly_like_the_eager_model():
    gen = torch.Generator().manual_seed(1)
    ids, targets = torch.randint(0, 64, (2, 16), generator=gen), torch.randint(0, 64, (2, 16), generator=gen)
    plain_loss, plain_grads = loss_and_grads(CFG, ids, targets)
    fused_cfg = dataclasses.replace(CFG, fused_cross_entropy=True, fused_mlp=True)
    fused_loss, fused_grads = loss_and_grads(fused_cfg, ids, targets)
    torch.testing.assert_close(fused_loss, plain_loss, rtol=0, atol=0)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_evaluation_ignores_the_training_only_cross_entropy_kernel():
    model = GPT(dataclasses.replace(CFG, fused_cross_entropy=True)).eval()
    ids = torch.randint(0, 64, (1, 8))
    per_token = model(ids, ids, reduction="none")
    assert per_token.shape == (1, 8) and torch.isfinite(per_token).all()


def test_fp8_on_cpu_is_reported_unavailable_and_changes_nothing():
    model = GPT(CFG)
    line = enable_fp8_matmul(model, torch.device("cpu"))
    assert line.startswith("fp8_matmul:unavailable")
    assert not any(getattr(m, "fp8_matmul", False) for m in model.modules())
