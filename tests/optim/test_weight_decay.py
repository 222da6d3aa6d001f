"""Decoupled weight decay: Muon's ``p *= 1 - lr*wd`` and the AdamW groups (SPEC 4.6)."""

import dataclasses

import pytest
import torch

from pgolf.config import ModelConfig, OptimConfig
from pgolf.optim.build import apply_lr_and_momentum, build_optimizers
from pgolf.optim.groups import assign_parameter_groups
from pgolf.model.gpt import GPT
from pgolf.optim.muon import Muon, zeropower_via_newton_schulz

CONTROL_PATTERNS = ModelConfig().control_tensor_name_patterns
SHAPES = [(24, 16), (16, 40), (20, 20)]


def muon_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in SHAPES]


def set_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def hand_muon_update(grad, momentum, steps=5):
    """First-step Muon update (zero buffer): Nesterov direction, Newton-Schulz, shape scale, in bf16."""
    buf = torch.zeros_like(grad).mul_(momentum).add_(grad)
    direction = grad.add(buf, alpha=momentum)
    rows, cols = grad.shape
    return zeropower_via_newton_schulz(direction, steps) * max(1.0, rows / cols) ** 0.5


@pytest.mark.parametrize("lr_mult", [1.0, 0.25])
def test_muon_weight_decay_one_step_by_hand(lr_mult):
    """The decay uses the scheduled LR: p <- p * (1 - lr*wd), then p <- p - lr*U."""
    base_lr, wd = 0.05, 0.1
    params = muon_params()
    before = [p.detach().clone() for p in params]
    opt = Muon([{"params": params, "base_lr": base_lr}], lr=base_lr, momentum=0.9, weight_decay=wd)
    apply_lr_and_momentum([opt], lr_mult=lr_mult)
    set_grads(params, seed=1)
    opt.step()
    lr = base_lr * lr_mult
    for p, p0 in zip(params, before):
        expected = p0.mul(1.0 - lr * wd).add(hand_muon_update(p.grad, 0.9).float(), alpha=-lr)
        assert torch.equal(p.detach(), expected)
        # And the decay really happened: without it the result differs.
        assert not torch.equal(p.detach(), p0.add(hand_muon_update(p.grad, 0.9).float(), alpha=-lr))


def test_muon_zero_weight_decay_is_exactly_the_old_update():
    params = muon_params()
    before = [p.detach().clone() for p in params]
    opt = Muon(params, lr=0.05, momentum=0.9, weight_decay=0.0, row_normalize=False)
    set_grads(params, seed=2)
    opt.step()
    for p, p0 in zip(params, before):
        assert torch.equal(p.detach(), p0.add(hand_muon_update(p.grad, 0.9).float(), alpha=-0.05))


def test_muon_weight_decay_skips_parameters_without_grad():
    params = muon_params()
    before = params[1].detach().clone()
    opt = Muon(params, lr=0.05, momentum=0.9, weight_decay=0.5)
    set_grads(params, seed=3)
    params[1].grad = None
    opt.step()
    assert torch.equal(params[1].detach(), before)


def test_muon_rejects_negative_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        Muon(muon_params(), lr=0.05, momentum=0.9, weight_decay=-0.1)


def tiny_gpt(tie_embeddings):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=32, num_layers=2, model_dim=16, num_heads=2, num_kv_heads=1,
                           tie_embeddings=tie_embeddings))


def decayed_config(**decays):
    return dataclasses.replace(OptimConfig(), **decays)


def test_groups_get_their_configured_decays():
    model = tiny_gpt(tie_embeddings=False)
    cfg = decayed_config(embed_wd=0.085, adam_wd=0.02, muon_wd=0.095, muon_row_normalize=True)
    opts = {o.param_groups[0]["group_name"]: o for o in build_optimizers(
        model, cfg, tie_embeddings=False, control_patterns=CONTROL_PATTERNS)}
    assert type(opts["token"]) is torch.optim.AdamW and opts["token"].param_groups[0]["weight_decay"] == 0.085
    assert type(opts["scalar"]) is torch.optim.AdamW and opts["scalar"].param_groups[0]["weight_decay"] == 0.02
    assert type(opts["head"]) is torch.optim.Adam and opts["head"].param_groups[0]["weight_decay"] == 0.0
    assert type(opts["matrix"]) is Muon
    assert opts["matrix"].param_groups[0]["weight_decay"] == 0.095
    assert opts["matrix"].param_groups[0]["row_normalize"] is True


def test_zero_decays_keep_plain_adam_and_plain_muon():
    model = tiny_gpt(tie_embeddings=False)
    opts = build_optimizers(model, OptimConfig(), tie_embeddings=False, control_patterns=CONTROL_PATTERNS)
    for opt in opts:
        group = opt.param_groups[0]
        if isinstance(opt, Muon):
            assert group["weight_decay"] == 0.0 and group["row_normalize"] is False
        else:
            assert type(opt) is torch.optim.Adam and group["weight_decay"] == 0.0


def test_adamw_first_step_by_hand_with_scheduled_lr():
    """float64 AdamW, first step: m_hat = g, v_hat = g^2, so p1 = p0 (1 - lr wd) - lr g / (|g| + eps)."""
    model = tiny_gpt(tie_embeddings=True)
    cfg = decayed_config(embed_wd=0.3, adam_wd=0.2)
    opts = build_optimizers(model, cfg, tie_embeddings=True, control_patterns=CONTROL_PATTERNS)
    groups = assign_parameter_groups(model, tie_embeddings=True, control_patterns=CONTROL_PATTERNS)
    before = {name: p.detach().double().clone() for name, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(4)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    apply_lr_and_momentum(opts, lr_mult=0.5)
    for opt in opts:
        opt.step()
    eps = cfg.adam_eps
    for group_name, base_lr, wd in [("token", cfg.tied_embed_lr, 0.3), ("scalar", cfg.scalar_lr, 0.2)]:
        lr = base_lr * 0.5
        for name, p in groups[group_name]:
            g = p.grad.double()
            expected = before[name] * (1 - lr * wd) - lr * g / (g.abs() + eps)
            torch.testing.assert_close(p.detach().double(), expected, rtol=1e-6, atol=1e-7)
