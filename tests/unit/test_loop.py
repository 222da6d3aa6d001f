"""The training loop: priming leaves no trace, the budget stops training, validation is off the clock;
looping switch and two-variant priming, GPTQ reserve, MIN_LR, EMA and global grad clipping."""

import dataclasses
import time

import numpy as np
import pytest
import torch
from testkit import RecordingLogger
import torch.nn.functional as F
from torch import nn

from pgolf.config import ModelConfig, OptimConfig, TrainConfig
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.shards import write_shard
from pgolf.dist import DistContext
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT
from pgolf.errors import ConfigError
from pgolf.optim.build import build_optimizers
from pgolf.train import loop as loop_module
from pgolf.train.clock import effective_training_budget
from pgolf.train.loop import TrainingParts, run_training_step, train_model

MODEL = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)
TRAIN = TrainConfig(train_batch_tokens=8 * 2 * 16, train_seq_len=16, warmup_steps=0, max_wallclock_seconds=0,
                    iterations=4, train_log_every=1, val_loss_every=0)
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)
ACCUM = CPU.grad_accum_steps  # micro-batches (forwards) per optimizer step


@pytest.fixture
def shard(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, np.tile(rng.integers(0, 64, size=29), 300))
    return path


def make_parts(shard) -> TrainingParts:
    torch.manual_seed(0)
    model = GPT(MODEL)
    optimizers = build_optimizers(model, OptimConfig(), tie_embeddings=True,
                                  control_patterns=MODEL.control_tensor_name_patterns)
    return TrainingParts(model, model, optimizers, DistributedTokenLoader([shard], 0, 1, "cpu"))


def run(parts, cfg, validate=None):
    outcome = train_model(parts, cfg, OptimConfig(), CPU, RunLogger(None, echo=False), validate)
    return outcome, [p.detach().clone() for p in parts.model.parameters()]


def test_priming_steps_leave_no_trace(shard):
    plain, plain_params = run(make_parts(shard), TRAIN)
    primed, primed_params = run(make_parts(shard), dataclasses.replace(TRAIN, warmup_steps=3))
    assert primed.last_train_loss == plain.last_train_loss
    for a, b in zip(plain_params, primed_params):
        assert torch.equal(a, b)


def test_iterations_stop_training_and_loss_falls(shard):
    outcome, _ = run(make_parts(shard), dataclasses.replace(TRAIN, iterations=12))
    assert outcome.steps == 12 and outcome.stopped_by == "iterations"
    assert outcome.tokens_seen == 12 * TRAIN.train_batch_tokens


def test_wall_clock_budget_stops_training(shard):
    outcome, _ = run(make_parts(shard), dataclasses.replace(TRAIN, iterations=10_000, max_wallclock_seconds=0.5))
    assert outcome.stopped_by == "wallclock" and 0 < outcome.steps < 10_000
    assert outcome.train_seconds >= 0.5


def test_validation_is_called_on_schedule_and_kept_off_the_clock(shard):
    calls = []

    def slow_validate(step):
        calls.append(step)
        time.sleep(1.0)

    cfg = dataclasses.replace(TRAIN, iterations=4, val_loss_every=2)
    parts = make_parts(shard)
    start = time.perf_counter()
    validated, _ = run(parts, cfg, slow_validate)
    wall = time.perf_counter() - start
    assert calls == [0, 2]
    # The two validations sleep 2.0 s of the call's wall time; none of it may be charged to training
    # time (a comparison with the wall clock, not with a second run, so a busy machine cannot flake it).
    assert validated.train_seconds <= wall - 2.0 + 0.01


# ---- record-stack training features: looping switch, priming both variants, GPTQ reserve, MIN_LR, EMA, clip




class LoopingToyModel(nn.Module):
    """Tied embedding plus one block matrix; looping runs the block twice. Records the variant of every forward."""

    def __init__(self, supports_looping=True):
        super().__init__()
        torch.manual_seed(0)
        self.tok_emb = nn.Embedding(64, 16)
        self.blocks = nn.ModuleList([nn.Linear(16, 16, bias=False)])
        self._supports_looping = supports_looping
        self.looping = False
        self.looping_at_forward: list[bool] = []
        self.set_looping_calls: list[bool] = []

    @property
    def supports_looping(self):
        return self._supports_looping

    def set_looping(self, enabled):
        self.set_looping_calls.append(enabled)
        self.looping = enabled

    def forward(self, x, y):
        self.looping_at_forward.append(self.looping)
        h = self.tok_emb(x)
        for _ in range(2 if self.looping else 1):
            h = h + torch.tanh(self.blocks[0](h))
        logits = h @ self.tok_emb.weight.T
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def toy_parts(shard, **model_kw) -> TrainingParts:
    model = LoopingToyModel(**model_kw)
    optimizers = build_optimizers(model, OptimConfig(), tie_embeddings=True, control_patterns=())
    return TrainingParts(model, model, optimizers, DistributedTokenLoader([shard], 0, 1, "cpu"))


def train_logged(parts, cfg, optim=None, validate=None):
    logger = RecordingLogger()
    outcome = train_model(parts, cfg, optim or OptimConfig(), CPU, logger, validate)
    return outcome, logger


def test_looping_switches_on_once_at_the_configured_progress(shard):
    parts = toy_parts(shard)
    cfg = dataclasses.replace(TRAIN, iterations=8, enable_looping_at=0.5)
    outcome, logger = train_logged(parts, cfg)
    # Progress is step / iterations before each step: 4/8 = 0.5 is the first due step.
    assert parts.model.looping_at_forward == [False] * 4 * ACCUM + [True] * 4 * ACCUM
    assert parts.model.set_looping_calls == [True]
    assert outcome.looping_enabled_step == 4
    assert "layer_loop:enabled step:4 frac:0.500" in logger.lines


def test_looping_from_the_start_and_never_without_support(shard):
    parts = toy_parts(shard)
    train_logged(parts, dataclasses.replace(TRAIN, enable_looping_at=0.0))
    assert parts.model.looping_at_forward == [True] * TRAIN.iterations * ACCUM
    plain = toy_parts(shard, supports_looping=False)
    outcome, logger = train_logged(plain, dataclasses.replace(TRAIN, warmup_steps=2, enable_looping_at=0.0))
    assert plain.model.set_looping_calls == [] and outcome.looping_enabled_step is None
    assert not any("loop" in line for line in logger.lines)


def test_priming_runs_both_variants_then_restores_exactly(shard):
    cfg = dataclasses.replace(TRAIN, iterations=3, enable_looping_at=0.5)
    plain_parts = toy_parts(shard)
    plain, _ = train_logged(plain_parts, cfg)
    primed_parts = toy_parts(shard)
    primed, logger = train_logged(primed_parts, dataclasses.replace(cfg, warmup_steps=2))
    model = primed_parts.model
    # 2 plain + 2 looped priming steps, then the timed run exactly as without priming.
    priming = [False] * 2 * ACCUM + [True] * 2 * ACCUM
    assert model.looping_at_forward == priming + plain_parts.model.looping_at_forward
    assert model.set_looping_calls == [True, False, True]  # priming on, priming off, the switch at step 2
    assert ["warmup_step:1/2", "warmup_step:2/2", "loop_warmup:enabled steps:2", "loop_warmup_step: 1/2",
            "loop_warmup_step: 2/2"] == logger.lines[:5]
    assert primed.last_train_loss == plain.last_train_loss
    for a, b in zip(plain_parts.model.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_real_gpt_primes_and_switches_looping(shard):
    looped = dataclasses.replace(MODEL, num_layers=3, num_loops=1, loop_start=1, loop_end=1)

    def parts_for():
        torch.manual_seed(0)
        model = GPT(looped)
        optimizers = build_optimizers(model, OptimConfig(), tie_embeddings=True,
                                      control_patterns=looped.control_tensor_name_patterns)
        return TrainingParts(model, model, optimizers, DistributedTokenLoader([shard], 0, 1, "cpu"))

    cfg = dataclasses.replace(TRAIN, iterations=4, enable_looping_at=0.5)
    plain_parts, primed_parts = parts_for(), parts_for()
    plain, _ = train_logged(plain_parts, cfg)
    primed, logger = train_logged(primed_parts, dataclasses.replace(cfg, warmup_steps=2))
    assert plain.looping_enabled_step == primed.looping_enabled_step == 2
    assert primed_parts.model.looping and "loop_warmup_step: 2/2" in logger.lines
    assert primed.last_train_loss == plain.last_train_loss
    for a, b in zip(plain_parts.model.parameters(), primed_parts.model.parameters()):
        assert torch.equal(a, b)


def test_effective_budget_subtracts_the_gptq_reserve():
    assert effective_training_budget(600.0, 12.0) == 588.0
    assert effective_training_budget(600.0, 0.0) == 600.0
    assert effective_training_budget(0.0, 12.0) == 0.0  # no cap: iterations decide, the reserve is moot
    with pytest.raises(ConfigError, match="GPTQ_RESERVE_SECONDS"):
        effective_training_budget(10.0, 10.0)


def test_gptq_reserve_shortens_training_and_drives_progress(shard, monkeypatch):
    budgets = []
    original = loop_module.training_progress

    def recording_progress(**kwargs):
        budgets.append(kwargs["budget_seconds"])
        return original(**kwargs)

    monkeypatch.setattr(loop_module, "training_progress", recording_progress)
    cfg = dataclasses.replace(TRAIN, iterations=100_000, max_wallclock_seconds=1.0, gptq_reserve_seconds=0.7)
    outcome, logger = train_logged(make_parts(shard), cfg)
    assert "gptq:reserving 0.7s, effective=300ms" in logger.lines
    assert outcome.stopped_by == "wallclock" and 0.3 <= outcome.train_seconds < 1.0
    assert budgets and all(b == pytest.approx(0.3) for b in budgets)


def test_min_lr_floors_the_warmdown_in_the_loop(shard):
    cfg = dataclasses.replace(TRAIN, iterations=4, warmdown_frac=1.0, min_lr=0.6)
    _, logger = train_logged(make_parts(shard), cfg)
    lr_mults = [fields["lr_mult"] for kind, fields in logger.events if kind == "train"]
    # Progress 0, 1/4, 2/4, 3/4: the line 1, 0.75, 0.5, 0.25 is floored at 0.6.
    assert lr_mults == pytest.approx([1.0, 0.75, 0.6, 0.6])


def test_ema_weights_replace_the_trained_weights(shard):
    """Weights after each step (seen by a validate hook before the next) folded by hand must equal the result."""
    snapshots = []
    cfg = dataclasses.replace(TRAIN, iterations=4, val_loss_every=1)
    parts = make_parts(shard)
    plain, _ = train_logged(parts, cfg, validate=lambda step: snapshots.append(
        [p.detach().double().clone() for p in parts.model.parameters()]))
    snapshots.append([p.detach().double().clone() for p in parts.model.parameters()])
    decay = 0.6
    ema_parts = make_parts(shard)
    outcome, logger = train_logged(ema_parts, dataclasses.replace(cfg, ema_decay=decay))
    assert outcome.ema_applied and "ema:applying EMA weights" in logger.lines
    assert outcome.last_train_loss == plain.last_train_loss  # the EMA does not touch training itself
    expected = snapshots[0]
    for weights in snapshots[1:]:
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights)]
    for got, want, original in zip(ema_parts.model.parameters(), expected, parts.model.parameters()):
        assert got.dtype == original.dtype
        torch.testing.assert_close(got.detach().double(), want, rtol=1e-5, atol=1e-5)


class RecordingOptimizer(torch.optim.SGD):
    """Records the gradients it is asked to apply and applies nothing."""

    def __init__(self, params):
        super().__init__([{"params": list(params), "base_lr": 0.0}], lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.detach().clone() for p in self.param_groups[0]["params"]])


def test_grad_clip_is_one_global_norm_over_all_parameters(shard):
    def clipped_grads(clip):
        torch.manual_seed(0)
        model = GPT(MODEL)
        recorder = RecordingOptimizer(model.parameters())
        parts = TrainingParts(model, model, [recorder], DistributedTokenLoader([shard], 0, 1, "cpu"))
        run_training_step(parts, TRAIN, dataclasses.replace(OptimConfig(), grad_clip_norm=clip), CPU,
                          lr_mult=1.0, muon_momentum=0.9)
        return recorder.seen[0]

    raw = clipped_grads(0.0)
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in raw))
    clip = float(total) / 4
    clipped = clipped_grads(clip)
    scale = clip / total
    # Every tensor is scaled by the same factor (per-tensor clipping would scale each differently).
    for g_raw, g_clipped in zip(raw, clipped):
        torch.testing.assert_close(g_clipped.double(), g_raw.double() * scale, rtol=1e-5, atol=1e-9)


def test_a_loss_scaler_scales_backward_and_unscales_before_the_step(shard):
    """fp16 training's GradScaler path through the loop (run here with the CPU scaler): gradients are
    unscaled before clipping and the optimizer step, so the result equals unscaled training; a scaler
    that never unscales would take steps 2**12 times too large (Adam partly hides it; Muon's
    orthogonalised update does not move, so we compare the raw gradients too)."""
    cfg = dataclasses.replace(TRAIN, iterations=3)
    optim = OptimConfig(grad_clip_norm=1.0)
    plain = make_parts(shard)
    scaled = make_parts(shard)
    scaled.loss_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    for step in range(cfg.iterations):
        a = run_training_step(plain, cfg, optim, CPU, lr_mult=1.0, muon_momentum=0.95)
        b = run_training_step(scaled, cfg, optim, CPU, lr_mult=1.0, muon_momentum=0.95)
        assert float(a) == pytest.approx(float(b), rel=1e-5)
        for p, q in zip(plain.model.parameters(), scaled.model.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert scaled.loss_scaler.get_scale() == 2.0 ** 12  # finite gradients: no back-off in 3 steps
