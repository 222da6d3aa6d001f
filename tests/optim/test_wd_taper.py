"""Muon weight-decay taper (SPEC 5.12, record 2026-04-18 CaseOps_Taper): the multiplier against a float64
re-statement, one Muon step by hand, and the training loop applying it step by step."""

import numpy as np
import pytest
import torch

from pgolf.config import Config, ModelConfig, OptimConfig, TrainConfig, validate_config
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.shards import write_shard
from pgolf.dist import DistContext
from pgolf.errors import ConfigError
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT
from pgolf.optim.build import apply_lr_and_momentum, build_optimizers
from pgolf.optim.muon import Muon, zeropower_via_newton_schulz
from pgolf.optim.schedules import muon_wd_multiplier_at
from pgolf.train import loop as loop_module
from pgolf.train.loop import TrainingParts, train_model

# The record's schedule as SPEC 5.12 states it: 1 until frac 0.70, then linear to 0.50 at frac 1.
RECORD_START, RECORD_FINAL = 0.70, 0.50


def reference_multiplier(frac: float, start: float = RECORD_START, final: float = RECORD_FINAL) -> float:
    """Float64 restatement: a lerp from 1 to ``final`` over [start, 1], 1 before."""
    if frac <= start:
        return 1.0
    t = (np.float64(frac) - start) / (np.float64(1.0) - start)
    return float((1.0 - t) * 1.0 + t * np.float64(final))


@pytest.mark.parametrize("frac", [0.0, 0.3, 0.69, 0.70, 0.71, 0.85, 0.9, 0.99, 1.0])
def test_multiplier_matches_the_float64_statement(frac):
    got = muon_wd_multiplier_at(frac, start=RECORD_START, final=RECORD_FINAL)
    assert got == pytest.approx(reference_multiplier(frac), abs=1e-15)


def test_multiplier_key_points():
    assert muon_wd_multiplier_at(0.70, start=0.70, final=0.5) == 1.0
    assert muon_wd_multiplier_at(0.85, start=0.70, final=0.5) == pytest.approx(0.75, abs=1e-15)
    assert muon_wd_multiplier_at(1.0, start=0.70, final=0.5) == pytest.approx(0.5, abs=1e-15)
    assert muon_wd_multiplier_at(1.0, start=0.0, final=0.0) == 0.0
    assert all(muon_wd_multiplier_at(f / 10, start=0.7, final=1.0) == 1.0 for f in range(11))  # final 1 = no taper


def muon_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in [(24, 16), (16, 40)]]


@pytest.mark.parametrize("wd_mult", [1.0, 0.75, 0.5])
def test_one_muon_step_decays_by_the_tapered_amount(wd_mult):
    """p <- p * (1 - lr * wd * mult), then p <- p - lr * U, with the scheduled lr."""
    base_lr, wd, lr_mult = 0.05, 0.1, 0.4
    params = muon_params()
    before = [p.detach().clone() for p in params]
    opt = Muon([{"params": params, "base_lr": base_lr, "base_weight_decay": wd}], lr=base_lr, momentum=0.9,
               weight_decay=wd)
    apply_lr_and_momentum([opt], lr_mult=lr_mult, muon_wd_mult=wd_mult)
    gen = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    lr = base_lr * lr_mult
    assert opt.param_groups[0]["weight_decay"] == wd * wd_mult
    for p, p0 in zip(params, before):
        direction = p.grad.add(p.grad, alpha=0.9)  # first step: Nesterov look-ahead on a fresh buffer
        update = zeropower_via_newton_schulz(direction, 5) * max(1.0, p.shape[0] / p.shape[1]) ** 0.5
        expected = p0.mul(1.0 - lr * (wd * wd_mult)).add(update.float(), alpha=-lr)
        assert torch.equal(p.detach(), expected)
        # float64 restatement of the decayed weight (the update term excluded): agrees to fp32 rounding.
        decayed = p0.double() * (1.0 - lr * wd * wd_mult)
        assert torch.allclose(p.detach().double() + lr * update.double(), decayed, atol=1e-6)


def test_no_multiplier_leaves_the_decay_and_old_groups_get_a_base():
    params = muon_params()
    opt = Muon([{"params": params, "base_lr": 0.05}], lr=0.05, momentum=0.9, weight_decay=0.2)
    apply_lr_and_momentum([opt], lr_mult=1.0)
    assert opt.param_groups[0]["weight_decay"] == 0.2
    apply_lr_and_momentum([opt], lr_mult=1.0, muon_wd_mult=0.5)  # a group without base_weight_decay (old checkpoint)
    apply_lr_and_momentum([opt], lr_mult=1.0, muon_wd_mult=0.5)  # applied twice: still half the base, not a quarter
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[0]["base_weight_decay"] == 0.2


def test_build_optimizers_records_the_base_decay_and_adam_groups_are_untouched():
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2))
    optimizers = build_optimizers(model, OptimConfig(muon_wd=0.095, adam_wd=0.02, embed_wd=0.085), tie_embeddings=True,
                                  control_patterns=ModelConfig().control_tensor_name_patterns)
    apply_lr_and_momentum(optimizers, lr_mult=1.0, muon_wd_mult=0.5)
    decays = {g["group_name"]: g["weight_decay"] for opt in optimizers for g in opt.param_groups}
    assert decays == {"token": 0.085, "matrix": 0.095 * 0.5, "scalar": 0.02}


def test_bad_taper_settings_are_refused():
    for changes in ({"muon_wd_taper_start": 1.0}, {"muon_wd_taper_start": -0.1}, {"muon_wd_taper_final": -0.5}):
        with pytest.raises(ConfigError, match="MUON_WD_TAPER"):
            validate_config(Config(optim=OptimConfig(muon_wd_taper=True, **changes)))


MODEL = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)
TRAIN = TrainConfig(train_batch_tokens=8 * 2 * 16, train_seq_len=16, warmup_steps=0, max_wallclock_seconds=0,
                    iterations=10, train_log_every=1, val_loss_every=0)
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, np.tile(np.random.default_rng(0).integers(0, 64, size=29), 300))
    return path


def train(shard, optim_cfg, train_cfg=TRAIN):
    torch.manual_seed(0)
    model = GPT(MODEL)
    optimizers = build_optimizers(model, optim_cfg, tie_embeddings=True, control_patterns=MODEL.control_tensor_name_patterns)
    parts = TrainingParts(model, model, optimizers, DistributedTokenLoader([shard], 0, 1, "cpu"))
    train_model(parts, train_cfg, optim_cfg, CPU, RunLogger(None, echo=False))
    return [p.detach().clone() for p in model.parameters()]


def test_the_loop_tapers_the_decay_by_progress(shard, monkeypatch):
    seen = []
    original = loop_module.apply_lr_and_momentum

    def spy(optimizers, **kwargs):
        original(optimizers, **kwargs)
        seen.append([g["weight_decay"] for opt in optimizers if isinstance(opt, Muon) for g in opt.param_groups][0])

    monkeypatch.setattr(loop_module, "apply_lr_and_momentum", spy)
    optim_cfg = OptimConfig(muon_wd=0.1, muon_wd_taper=True, muon_wd_taper_start=0.5, muon_wd_taper_final=0.2)
    train(shard, optim_cfg)
    # Without a wall clock, progress = step / ITERATIONS at the start of each step.
    expected = [0.1 * reference_multiplier(step / 10, 0.5, 0.2) for step in range(10)]
    assert seen == pytest.approx(expected, abs=1e-15)
    assert seen[:6] == [0.1] * 6 and seen[-1] < seen[-2] < 0.1


def test_taper_off_or_flat_trains_bit_identically(shard):
    plain = train(shard, OptimConfig(muon_wd=0.1))
    flat = train(shard, OptimConfig(muon_wd=0.1, muon_wd_taper=True, muon_wd_taper_final=1.0))
    tapered = train(shard, OptimConfig(muon_wd=0.1, muon_wd_taper=True, muon_wd_taper_start=0.0, muon_wd_taper_final=0.0))
    assert all(torch.equal(a, b) for a, b in zip(plain, flat))
    assert not all(torch.equal(a, b) for a, b in zip(plain, tapered))
    assert OptimConfig().muon_wd_taper is False  # off by default
