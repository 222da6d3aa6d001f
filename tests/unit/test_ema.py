"""EMA of the weights against a float64 hand loop: start step, dtype casts on apply (SPEC 4.9)."""

import pytest
import torch
from torch import nn

from pgolf.errors import ConfigError
from pgolf.train.ema import WeightEMA


class MixedDtypeModel(nn.Module):
    """An fp32 matrix, a bf16 embedding (as in the real model), an fp32 buffer and an integer buffer."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.linear = nn.Linear(6, 4, bias=False)
        self.emb = nn.Parameter(torch.randn(5, 3, generator=gen).bfloat16())
        self.register_buffer("scale", torch.full((4,), 2.0))
        self.register_buffer("counter", torch.tensor([3, 7], dtype=torch.int64))


def perturb(model, seed):
    """Stand-in for an optimizer step: add noise to every floating tensor in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (model.linear.weight, model.emb, model.scale):
            tensor.add_(torch.randn(tensor.shape, generator=gen).to(tensor.dtype))
        model.counter.add_(1)


def float_state(model):
    return {name: t.detach().double().clone() for name, t in model.state_dict().items() if t.is_floating_point()}


def hand_ema(snapshots, decay, start_step):
    """snapshots[n] = weights after n steps. Steps with 0-based index >= start_step are averaged in; before
    that the average is the weights themselves (so start_step 0 starts from the initial weights)."""
    ema = dict(snapshots[0])
    for n in range(1, len(snapshots)):
        if n <= start_step:
            ema = dict(snapshots[n])
        else:
            ema = {name: decay * ema[name] + (1 - decay) * snapshots[n][name] for name in ema}
    return ema


@pytest.mark.parametrize("start_step", [0, 1, 3])
def test_ema_matches_hand_loop(start_step):
    model = MixedDtypeModel()
    decay = 0.8
    ema = WeightEMA(model, decay, start_step)
    snapshots = [float_state(model)]
    for n in range(1, 7):
        perturb(model, seed=n)
        ema.update(model, n)
        snapshots.append(float_state(model))
        expected = hand_ema(snapshots, decay, start_step)
        assert set(ema.shadow) == {"linear.weight", "emb", "scale"}  # integer buffers are not averaged
        for name, value in expected.items():
            assert ema.shadow[name].dtype == torch.float32
            torch.testing.assert_close(ema.shadow[name].double(), value, rtol=1e-6, atol=1e-6)


def test_start_step_ignores_early_weights():
    """With start_step 3 the average follows the weights through step 3 and averages from step 4."""
    model = MixedDtypeModel()
    ema = WeightEMA(model, 0.9, start_step=3)
    for n in (1, 2, 3):
        perturb(model, seed=n)
        ema.update(model, n)
        assert torch.equal(ema.shadow["linear.weight"], model.linear.weight.detach())
        assert torch.equal(ema.shadow["emb"], model.emb.detach().float())
    after_three = ema.shadow["linear.weight"].clone()
    perturb(model, seed=4)
    ema.update(model, 4)
    expected = 0.9 * after_three.double() + 0.1 * model.linear.weight.detach().double()
    torch.testing.assert_close(ema.shadow["linear.weight"].double(), expected, rtol=1e-6, atol=1e-7)


def test_fp32_average_moves_where_bf16_would_not():
    """A 0.3 % step towards a bf16 weight is below bf16 resolution; the fp32 shadow still records it."""
    model = MixedDtypeModel()
    ema = WeightEMA(model, 0.997)
    start = ema.shadow["emb"].clone()
    with torch.no_grad():
        model.emb.add_(0.01)
    ema.update(model, 1)
    assert not torch.equal(ema.shadow["emb"], start)


def test_apply_casts_to_each_tensor_dtype_and_leaves_integers():
    model = MixedDtypeModel()
    ema = WeightEMA(model, 0.5)
    for n in range(1, 4):
        perturb(model, seed=10 + n)
        ema.update(model, n)
    counter = model.counter.clone()
    weight_object = model.linear.weight
    ema.apply_to(model)
    assert model.emb.dtype == torch.bfloat16 and model.linear.weight.dtype == torch.float32
    assert torch.equal(model.emb.detach(), ema.shadow["emb"].bfloat16())
    assert torch.equal(model.linear.weight.detach(), ema.shadow["linear.weight"])
    assert torch.equal(model.scale, ema.shadow["scale"])
    assert torch.equal(model.counter, counter)
    assert model.linear.weight is weight_object  # in place: optimizers and wrappers keep working


def test_bad_settings_and_changed_models_are_errors():
    model = MixedDtypeModel()
    with pytest.raises(ConfigError, match="EMA_DECAY"):
        WeightEMA(model, 1.0)
    with pytest.raises(ConfigError, match="EMA_START_STEP"):
        WeightEMA(model, 0.9, start_step=-1)
    ema = WeightEMA(model, 0.9)
    model.extra = nn.Parameter(torch.zeros(2))
    with pytest.raises(RuntimeError, match="extra"):
        ema.update(model, 1)
