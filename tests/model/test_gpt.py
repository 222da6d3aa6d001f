import dataclasses

import pytest
import torch

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT, count_parameters
from pgolf.model.layers import apply_rotary
from pgolf.model.schedule import unet_layer_schedule
from pgolf.presets import baseline_sp1024

TINY = ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2)


def tiny_model(seed: int = 0, **changes) -> GPT:
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(TINY, **changes))
    # The output projections start at zero (identity blocks); give them values so every path is exercised.
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "zero_init", False):
                module.weight.normal_(0, 0.05)
    return model


def test_baseline_parameter_count_matches_the_challenge_log():
    assert count_parameters(GPT(baseline_sp1024().model)) == 17_059_912


def test_parameter_count_by_component():
    model = GPT(baseline_sp1024().model)
    block = sum(p.numel() for p in model.blocks[0].parameters())
    assert block == 1_835_008 + 2_056
    assert model.skip_weights.shape == (4, 512)


def test_unet_schedule():
    schedule = unet_layer_schedule(9)
    assert schedule.encoder == (0, 1, 2, 3) and schedule.decoder == (4, 5, 6, 7, 8) and schedule.num_skip == 4
    assert unet_layer_schedule(1).encoder == () and unet_layer_schedule(1).num_skip == 0


@pytest.mark.parametrize("tie", [True, False])
def test_loss_finite_and_every_parameter_gets_a_gradient(tie):
    model = tiny_model(tie_embeddings=tie)
    x = torch.randint(0, 64, (2, 16))
    loss = model(x, torch.roll(x, -1, 1))
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, f"{name} received a zero gradient"


def test_initial_loss_is_near_uniform():
    model = GPT(TINY)  # real init: tiny embedding, zero output projections
    x = torch.randint(0, 64, (4, 32))
    loss = model(x, torch.randint(0, 64, (4, 32)))
    assert abs(loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.1


def test_untied_head_starts_at_zero():
    model = GPT(dataclasses.replace(TINY, tie_embeddings=False))
    assert model.lm_head is not None and torch.count_nonzero(model.lm_head.weight) == 0


def test_causality_future_tokens_do_not_change_past_logits():
    model = tiny_model().eval()
    x = torch.randint(0, 64, (1, 24))
    changed = x.clone()
    changed[0, 12:] = torch.randint(0, 64, (12,))
    with torch.no_grad():
        a, b = model.forward_logits(x), model.forward_logits(changed)
    assert torch.equal(a[0, :12], b[0, :12])
    assert not torch.allclose(a[0, 12:], b[0, 12:])


def test_reductions_agree():
    model = tiny_model().eval()
    x, y = torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        mean, total, per_token = model(x, y), model(x, y, "sum"), model(x, y, "none")
    assert per_token.shape == (2, 8)
    torch.testing.assert_close(total, per_token.sum())
    torch.testing.assert_close(mean * 16, total)


def test_softcap_bounds_logits():
    model = tiny_model(logit_softcap=2.0).eval()
    with torch.no_grad():
        logits = model.forward_logits(torch.randint(0, 64, (1, 8)))
    assert logits.abs().max() <= 2.0


def test_rotary_preserves_norm_and_is_relative():
    x = torch.randn(1, 1, 5, 8)
    angles = torch.outer(torch.arange(5.0), torch.tensor([1.0, 0.1, 0.01, 0.001]))
    rotated = apply_rotary(x, angles.cos()[None, None], angles.sin()[None, None])
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    assert torch.equal(rotated[..., 0, :], x[..., 0, :])  # position 0 is not rotated
