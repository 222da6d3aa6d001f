"""Checkpoints in the training loop: a run resumed from a checkpoint continues bit for bit like the
uninterrupted run (the reference), for both loaders, with EMA and a depth-recurrence switch; the
checkpoint triggers, pruning, the clock, and a non-finite loss keeping the last good checkpoint."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from testkit import RecordingLogger

from pgolf.config import Config, ModelConfig, OptimConfig, TrainConfig
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.shards import write_shard
from pgolf.data.shuffled import ShuffledSequenceLoader
from pgolf.dist import DistContext
from pgolf.errors import TrainingError
from pgolf.model.gpt import GPT
from pgolf.optim.build import build_optimizers
from pgolf.train import loop as loop_module
from pgolf.train.checkpoint import CheckpointManager, TrainingPosition, complete_checkpoints, newest_checkpoint
from pgolf.train.loop import TrainingParts, train_model

MODEL = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)
TRAIN = TrainConfig(train_batch_tokens=8 * 16, train_seq_len=16, warmup_steps=0, max_wallclock_seconds=0,
                    iterations=6, train_log_every=1, val_loss_every=0, warmdown_frac=0.5)
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)
LOADERS = {"sequential": DistributedTokenLoader, "shuffled": ShuffledSequenceLoader}


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(2):  # small shards: the shuffled loader starts a new epoch every two or three steps
        path = tmp_path / "data" / f"fineweb_train_{index:06d}.bin"
        path.parent.mkdir(exist_ok=True)
        write_shard(path, rng.integers(0, 64, size=150))
        paths.append(path)
    return paths


def make_parts(shards, loader="sequential", model_cfg=MODEL) -> TrainingParts:
    torch.manual_seed(0)
    model = GPT(model_cfg)
    optimizers = build_optimizers(model, OptimConfig(), tie_embeddings=True,
                                  control_patterns=model_cfg.control_tensor_name_patterns)
    return TrainingParts(model, model, optimizers, LOADERS[loader](shards, 0, 1, "cpu"))


def manager(run_dir, train_cfg, logger, resume_from=None) -> CheckpointManager:
    return CheckpointManager(run_dir, Config(train=train_cfg), CPU, logger, resume_from=resume_from)


def run_logged(parts, cfg, run_dir, resume_from=None):
    logger = RecordingLogger()
    checkpoints = manager(run_dir, cfg, logger, resume_from)
    outcome = train_model(parts, cfg, OptimConfig(), CPU, logger, checkpoints=checkpoints)
    return outcome, logger


def train_losses(logger) -> dict[int, float]:
    return {fields["step"]: fields["train_loss"] for kind, fields in logger.events if kind == "train"}


@pytest.mark.parametrize("loader, extra", [
    ("sequential", {}),
    ("shuffled", {"ema_decay": 0.9, "ema_start_step": 1}),
])
def test_resumed_run_matches_the_uninterrupted_run_bit_for_bit(shards, tmp_path, loader, extra):
    cfg = dataclasses.replace(TRAIN, checkpoint_every=2, checkpoint_keep=3, **extra)
    reference_parts = make_parts(shards, loader)
    reference, reference_log = run_logged(reference_parts, dataclasses.replace(cfg, checkpoint_every=0),
                                          tmp_path / "reference")
    first, _ = run_logged(make_parts(shards, loader), cfg, tmp_path / "run")
    assert [c.name for c in complete_checkpoints(tmp_path / "run")] == ["step_00000002", "step_00000004"]

    # A fresh process would rebuild everything from the seed; a different seed proves the restore.
    torch.manual_seed(123)
    np.random.seed(123)
    resumed_parts = make_parts(shards, loader)
    resumed, resumed_log = run_logged(resumed_parts, cfg, tmp_path / "run",
                                      resume_from=tmp_path / "run" / "checkpoints" / "step_00000004")
    assert any(line.startswith("resume:from") and "step:4" in line for line in resumed_log.lines)
    assert sorted(train_losses(resumed_log)) == [5, 6]
    for step, loss in train_losses(resumed_log).items():
        assert loss == train_losses(reference_log)[step], step  # bit for bit
    assert resumed.steps == reference.steps == 6 and resumed.last_train_loss == reference.last_train_loss
    for got, want in zip(resumed_parts.model.state_dict().values(), reference_parts.model.state_dict().values()):
        assert torch.equal(got, want)
    assert first.last_train_loss == reference.last_train_loss  # writing checkpoints changes nothing


def test_looping_switch_and_step_survive_a_resume(shards, tmp_path):
    looped = dataclasses.replace(MODEL, num_layers=3, num_loops=1, loop_start=1, loop_end=1)
    cfg = dataclasses.replace(TRAIN, checkpoint_every=4, enable_looping_at=0.5)
    reference, reference_log = run_logged(make_parts(shards, model_cfg=looped), dataclasses.replace(
        cfg, checkpoint_every=0), tmp_path / "reference")
    run_logged(make_parts(shards, model_cfg=looped), cfg, tmp_path / "run")
    parts = make_parts(shards, model_cfg=looped)
    resumed, log = run_logged(parts, cfg, tmp_path / "run", resume_from=newest_checkpoint(tmp_path / "run"))
    assert reference.looping_enabled_step == resumed.looping_enabled_step == 3
    assert parts.model.looping and "looping:True" in next(line for line in log.lines if line.startswith("resume:"))
    assert train_losses(log) == {step: train_losses(reference_log)[step] for step in (5, 6)}


def test_the_clock_continues_from_the_checkpoint(shards, tmp_path):
    cfg = dataclasses.replace(TRAIN, checkpoint_every=3)
    run_logged(make_parts(shards), cfg, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000003"
    saved_seconds = json.loads((checkpoint / "manifest.json").read_text())["train_seconds"]
    assert saved_seconds > 0
    resumed, log = run_logged(make_parts(shards), cfg, tmp_path / "run", resume_from=checkpoint)
    first_logged = [fields["train_seconds"] for kind, fields in log.events if kind == "train"][0]
    assert first_logged > saved_seconds and resumed.train_seconds > saved_seconds


def test_seconds_trigger_and_keep(shards, tmp_path):
    cfg = dataclasses.replace(TRAIN, iterations=5, checkpoint_every_seconds=1e-9, checkpoint_keep=2)
    _, log = run_logged(make_parts(shards), cfg, tmp_path / "run")
    saved = [fields["step"] for kind, fields in log.events if kind == "checkpoint"]
    assert saved == [1, 2, 3, 4]  # every step is due; none after the last step
    assert [c.name for c in complete_checkpoints(tmp_path / "run")] == ["step_00000003", "step_00000004"]
    assert not list((tmp_path / "run" / "checkpoints").glob("*.partial"))


def test_no_periodic_checkpoints_when_off(shards, tmp_path):
    run_logged(make_parts(shards), TRAIN, tmp_path / "run")
    assert complete_checkpoints(tmp_path / "run") == []


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shards, tmp_path, monkeypatch):
    real_step = loop_module.run_training_step
    calls = []

    def nan_at_step_four(*args, **kwargs):
        calls.append(1)
        loss = real_step(*args, **kwargs)
        return loss * math.nan if len(calls) == 4 else loss

    monkeypatch.setattr(loop_module, "run_training_step", nan_at_step_four)
    cfg = dataclasses.replace(TRAIN, checkpoint_every=2)
    logger = RecordingLogger()
    with pytest.raises(TrainingError, match=r"at step 4 \(last finite loss \d.*step_00000002"):
        train_model(make_parts(shards), cfg, OptimConfig(), CPU, logger,
                    checkpoints=manager(tmp_path / "run", cfg, logger))
    assert any(line.startswith("stopping:non_finite_loss step:4 last_finite_loss:") for line in logger.lines)
    assert newest_checkpoint(tmp_path / "run").name == "step_00000002"


def test_checkpoint_with_non_finite_weights_is_skipped(shards, tmp_path):
    parts = make_parts(shards)
    logger = RecordingLogger()
    checkpoints = manager(tmp_path / "run", TRAIN, logger)
    with torch.no_grad():
        next(parts.model.parameters()).fill_(math.inf)
    assert checkpoints.save(parts.model, parts.optimizers, parts.loader, None, TrainingPosition(step=1)) is None
    assert complete_checkpoints(tmp_path / "run") == [] and "checkpoint:skipped" in logger.lines[-1]
