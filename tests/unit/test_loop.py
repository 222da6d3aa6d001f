"""The training loop: priming leaves no trace, the budget stops training, validation is off the clock."""

import dataclasses
import time

import numpy as np
import pytest
import torch

from pgolf.config import ModelConfig, OptimConfig, TrainConfig
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.shards import write_shard
from pgolf.dist import DistContext
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT
from pgolf.optim.build import build_optimizers
from pgolf.train.loop import TrainingParts, train_model

MODEL = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)
TRAIN = TrainConfig(train_batch_tokens=8 * 2 * 16, train_seq_len=16, warmup_steps=0, max_wallclock_seconds=0,
                    iterations=4, train_log_every=1, val_loss_every=0)
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)


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
        time.sleep(0.5)

    cfg = dataclasses.replace(TRAIN, iterations=4, val_loss_every=2)
    plain, _ = run(make_parts(shard), cfg)
    validated, _ = run(make_parts(shard), cfg, slow_validate)
    assert calls == [0, 2]
    # The two validations sleep 1.0 s in total; none of it may be charged to training time.
    assert validated.train_seconds < plain.train_seconds + 0.5
