import dataclasses

import pytest
import torch

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT, count_parameters
from pgolf.model.layers import apply_rotary
from pgolf.model.schedule import unet_layer_schedule
from pgolf.presets import baseline_sp1024, record_sp8192

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


def test_record_parameter_count_matches_the_record_log():
    """R1081 (SPEC 4.4): 4,194,304 embedding + 11 x 2,883,584 matrices + 11 x 2,056 block scalars +
    8 x 512 skip weights + 8 x 512 skip gates (skip slots sized for the looped schedule)."""
    record = ModelConfig(vocab_size=8192, num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=4.0,
                         tie_embeddings=True, logit_softcap=30, rope_dims=16, ln_scale=True, xsa_last_n=11,
                         skip_gates_enabled=True, num_loops=2, loop_start=3, loop_end=5, parallel_residual_start=7,
                         parallel_residual_mode="single", activation="leaky_relu2", qk_gain_init=5.25, ortho_init=True)
    model = GPT(record)
    assert count_parameters(model) == 35_944_536
    assert model.skip_weights.shape == model.skip_gates.shape == (8, 512)
    assert count_parameters(GPT(record_sp8192().model)) == 35_944_536


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


def baseline_logits_in_the_original_op_order(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """The baseline forward (SPEC 2.4) in the exact op order of the first implementation, so the
    feature-off model can be held to it bit for bit."""
    x = torch.nn.functional.rms_norm(model.tok_emb(ids), (model.cfg.model_dim,))
    x0, skips, num_encoder = x, [], model.cfg.num_layers // 2
    for i, block in enumerate(model.blocks):
        if i >= num_encoder and skips:
            x = x + model.skip_weights[i - num_encoder] * skips.pop()
        mix = block.resid_mix
        x = mix[0] * x + mix[1] * x0
        x = x + block.attn_scale * block.attn(block.attn_norm(x))
        x = x + block.mlp_scale * block.mlp.proj(torch.relu(block.mlp.fc(block.mlp_norm(x))).square())
        if i < num_encoder:
            skips.append(x)
    logits = torch.nn.functional.linear(model.final_norm(x), model.tok_emb.weight)
    return 30.0 * torch.tanh(logits / 30.0)


@pytest.mark.parametrize("num_layers", [3, 4])
def test_feature_off_forward_is_bit_identical_to_the_baseline(num_layers):
    model = tiny_model(num_layers=num_layers).eval()
    with torch.no_grad():
        model.skip_weights.normal_()
        ids = torch.randint(0, 64, (2, 16))
        assert torch.equal(model.forward_logits(ids), baseline_logits_in_the_original_op_order(model, ids))
