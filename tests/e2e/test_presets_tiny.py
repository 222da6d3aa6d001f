"""Every preset, shrunk to tiny width but with all its features, trains on CPU with finite, falling loss.

Only the sizes change (width, vocabulary, sequence, batch, steps); every feature flag, optimizer
setting, schedule and loader of the preset is kept, including the recurrence switch and the priming
of both graph variants.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from pgolf.config import validate_config
from pgolf.data.shards import write_shard
from pgolf.dist import DistContext
from pgolf.log import RunLogger
from pgolf.model.gpt import GPT
from pgolf.optim.build import build_optimizers
from pgolf.presets import PRESETS, preset_config
from pgolf.data.run_data import build_train_loader
from pgolf.train.loop import TrainingParts, train_model

VOCAB, SEQ, STEPS = 128, 64, 14


def shrink(name: str):
    cfg = preset_config(name)
    model = dataclasses.replace(cfg.model, vocab_size=VOCAB, model_dim=64, num_heads=4, num_kv_heads=2,
                                rope_train_seq_len=SEQ if cfg.model.rope_train_seq_len else 0)
    train = dataclasses.replace(cfg.train, train_seq_len=SEQ, train_batch_tokens=8 * SEQ * 2, iterations=STEPS,
                                max_wallclock_seconds=0.0, gptq_reserve_seconds=0.0, warmup_steps=2, compile=False,
                                train_log_every=1, val_loss_every=0, ema_start_step=0)
    return validate_config(dataclasses.replace(cfg, model=model, train=train))


@pytest.fixture(scope="module")
def train_files(tmp_path_factory):
    """A repeated random passage: learnable within a few steps, so the loss must fall."""
    passage = np.random.default_rng(0).integers(0, VOCAB, size=300)
    path = tmp_path_factory.mktemp("data") / "fineweb_train_000000.bin"
    write_shard(path, np.tile(passage, 60))
    return [path]


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if not n.endswith("_1gpu")))
def test_preset_shrunk_to_tiny_trains(name, train_files, tmp_path):
    cfg = shrink(name)
    torch.manual_seed(0)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)
    model = GPT(cfg.model)
    optimizers = build_optimizers(model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings,
                                  control_patterns=cfg.model.control_tensor_name_patterns)
    parts = TrainingParts(model, model, optimizers, build_train_loader(cfg.train.train_loader, cfg.model.vocab_size, ctx, train_files))
    logger = RunLogger(tmp_path, enabled=True, echo=False)
    outcome = train_model(parts, cfg.train, cfg.optim, ctx, logger)
    logger.close()
    losses = [e["train_loss"] for e in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
              if e.get("event") == "train"]
    assert outcome.steps == STEPS and len(losses) == STEPS
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0] - 0.3, losses
    if cfg.model.num_loops:
        assert outcome.looping_enabled_step is not None and model.looping


@pytest.mark.parametrize("name,params", [("record_sp8192", 35_944_536), ("baseline_sp1024", 17_059_912),
                                         ("top_sp8192", 35_945_671), ("frontier_caseops", 35_944_602)])
def test_describe_prints_the_exact_parameter_counts(name, params, capsys):
    from pgolf.cli import main as cli_main

    assert cli_main(["describe", f"preset={name}", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["preset"] == name and described["model_params"] == params
    assert described["config"]["num_layers"] == preset_config(name).model.num_layers
