"""The state a checkpoint carries, piece by piece: RNG streams, optimizer states (Adam and Muon) through
the tensor container, loader positions through JSON; Ctrl-C handling; which settings a resume may change."""

import json
import os
import random
import signal

import numpy as np
import pytest
import torch

from pgolf.artifact.container import pack_tensor_container, unpack_tensor_container
from pgolf.config import Config, apply_config_overrides, config_to_json
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.shards import write_shard
from pgolf.data.shuffled import ShuffledSequenceLoader
from pgolf.errors import ConfigError, DataError
from pgolf.optim.muon import Muon
from pgolf.train.checkpoint_state import (InterruptRequest, capture_rng_states, load_optimizer_states,
                                          optimizer_state_parts, restore_rng_states)
from pgolf.train.resume import RESUME_ADJUSTABLE_FIELDS, resume_config_conflicts, resume_run_config


def through_container(tensors, meta):
    """What a checkpoint file does to the state: bytes on disk and back (JSON meta, raw tensors)."""
    return unpack_tensor_container(pack_tensor_container(tensors, meta))


def draws():
    return torch.rand(5).tolist(), np.random.rand(5).tolist(), [random.random() for _ in range(5)]


def test_every_rng_stream_continues_exactly():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    draws()
    tensors, meta = through_container(*capture_rng_states(torch.device("cpu")))
    expected = draws()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng_states(tensors, meta, torch.device("cpu"))
    assert draws() == expected


def make_optimizers(seed):
    torch.manual_seed(seed)
    weights = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(6, 6))]
    embedding = torch.nn.Parameter(torch.randn(10, 4, dtype=torch.bfloat16))
    adam = torch.optim.Adam([{"params": [embedding], "lr": 0.01, "base_lr": 0.01, "group_name": "token"}],
                            betas=(0.8, 0.95), eps=1e-8)
    muon = Muon([{"params": weights, "lr": 0.02, "base_lr": 0.02, "group_name": "matrix"}], lr=0.02, momentum=0.95)
    return [embedding, *weights], [adam, muon]


def optimizer_steps(params, optimizers, count, lr=0.01):
    for _ in range(count):
        for p in params:
            p.grad = torch.randn_like(p)
        for opt in optimizers:
            opt.param_groups[0]["lr"] = lr
            opt.step()


def test_adam_and_muon_state_round_trip_and_continue_identically():
    params, optimizers = make_optimizers(0)
    optimizer_steps(params, optimizers, 3, lr=0.003)
    saved = []
    for index, opt in enumerate(optimizers):
        tensors, meta = optimizer_state_parts(opt, f"optimizer/{index}")
        saved.append(through_container(tensors, meta))
    snapshot = [p.detach().clone() for p in params]

    fresh_params, fresh = make_optimizers(5)
    with torch.no_grad():
        for p, value in zip(fresh_params, snapshot):
            p.copy_(value)
    tensors = {name: t for part, _ in saved for name, t in part.items()}
    load_optimizer_states(fresh, tensors, [meta for _, meta in saved], "test")
    assert fresh[0].param_groups[0]["betas"] == (0.8, 0.95) and fresh[0].param_groups[0]["lr"] == 0.003
    for a, b in zip(optimizers, fresh):
        for pa, pb in zip(a.param_groups[0]["params"], b.param_groups[0]["params"]):
            assert a.state[pa].keys() == b.state[pb].keys()
            for key in a.state[pa]:
                assert torch.equal(a.state[pa][key], b.state[pb][key]), key
    torch.manual_seed(7)
    optimizer_steps(params, optimizers, 2)
    torch.manual_seed(7)
    optimizer_steps(fresh_params, fresh, 2)
    for a, b in zip(params, fresh_params):
        assert torch.equal(a, b)


def test_optimizer_state_of_another_setup_is_refused():
    params, optimizers = make_optimizers(0)
    optimizer_steps(params, optimizers, 1)
    parts = [optimizer_state_parts(opt, f"optimizer/{i}") for i, opt in enumerate(optimizers)]
    tensors = {name: t for part, _ in parts for name, t in part.items()}
    with pytest.raises(ConfigError, match="holds 2 optimizers but this run has 1"):
        load_optimizer_states(optimizers[:1], tensors, [meta for _, meta in parts], "ckpt")
    with pytest.raises(ConfigError, match="holds a Muon where this run has a Adam"):
        load_optimizer_states(optimizers[:1], tensors, [parts[1][1]], "ckpt")


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(3):
        path = tmp_path / f"fineweb_train_{index:06d}.bin"
        write_shard(path, rng.integers(0, 50, size=200 + 37 * index))
        paths.append(path)
    return paths


@pytest.mark.parametrize("loader_class", [DistributedTokenLoader, ShuffledSequenceLoader])
@pytest.mark.parametrize("batches_before", [0, 1, 12])
def test_loader_position_round_trips_through_json(shards, loader_class, batches_before):
    loader = loader_class(shards, 0, 1, "cpu")
    for _ in range(batches_before):  # 12 batches of 64 tokens cross shard and epoch boundaries
        loader.next_batch(64, 16, 1)
    state = json.loads(json.dumps(loader.position_state()))
    expected = [loader.next_batch(64, 16, 1) for _ in range(9)]
    other = loader_class(shards, 0, 1, "cpu")
    other.next_batch(64, 16, 1)  # wherever it was, loading puts it back
    other.restore_position(state)
    for (x, y), (x2, y2) in zip(expected, [other.next_batch(64, 16, 1) for _ in range(9)]):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_loader_state_from_other_shards_is_refused(shards):
    state = DistributedTokenLoader(shards, 0, 1, "cpu").position_state()
    with pytest.raises(DataError, match="training data changed"):
        DistributedTokenLoader(shards[:2], 0, 1, "cpu").restore_position(state)
    with pytest.raises(DataError, match="TRAIN_LOADER=shuffled"):
        ShuffledSequenceLoader(shards, 0, 1, "cpu").restore_position(state)


def test_ctrl_c_sets_a_flag_then_a_later_one_interrupts_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with InterruptRequest() as interrupt:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested
        os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C forwarded again (torchrun): still waits
        interrupt.first_at -= 60
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a later Ctrl-C does not wait for the step
    assert signal.getsignal(signal.SIGINT) is before


def test_a_resume_may_move_paths_and_change_intervals_only():
    saved = json.loads(config_to_json(Config()))
    allowed = apply_config_overrides(Config(), {"DATA_PATH": "/moved", "CHECKPOINT_EVERY": "5",
                                                "TRAIN_LOG_EVERY": "1", "RUN_ID": "x"}, source="test")
    assert resume_config_conflicts(saved, allowed) == []
    changed = apply_config_overrides(Config(), {"NUM_LAYERS": "3", "MATRIX_LR": "0.1"}, source="test")
    assert resume_config_conflicts(saved, changed) == ["MATRIX_LR=0.1 (the run has 0.04)",
                                                       "NUM_LAYERS=3 (the run has 9)"]
    assert {"data_path", "checkpoint_keep", "checkpoint_sync"} <= RESUME_ADJUSTABLE_FIELDS  # where copies go is not the run


def test_resume_run_config_reads_the_run_and_refuses_other_overrides(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(config_to_json(apply_config_overrides(
        Config(), {"NUM_LAYERS": "3", "RUNS_DIR": "/elsewhere"}, source="test")))
    cfg, preset = resume_run_config(run_dir, {"checkpoint_every": "7"})
    assert (cfg.model.num_layers, cfg.train.checkpoint_every, preset) == (3, 7, "custom")
    assert (cfg.run.runs_dir, cfg.run.run_id) == (str(tmp_path / "runs"), "r1")  # where the run is now
    with pytest.raises(ConfigError, match="NUM_LAYERS cannot change"):
        resume_run_config(run_dir, {"NUM_LAYERS": "4"})
    with pytest.raises(ConfigError, match="config.json not found"):
        resume_run_config(tmp_path, {})
