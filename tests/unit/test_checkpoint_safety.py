"""Crash safety of checkpoints and artifacts: a failed or killed write never leaves something that
looks complete, a full disk leaves no partial file, and truncated, damaged or pickled files are
refused with a message naming the file (and a pickle's code never runs)."""

import errno
import json
import os
import pickle

import numpy as np
import pytest
import torch
from testkit import RecordingLogger

from pgolf.config import Config, ModelConfig, OptimConfig, QuantConfig, RunConfig, TrainConfig
from pgolf.data.loader import DistributedTokenLoader
from pgolf.data.shards import write_shard
from pgolf.dist import DistContext
from pgolf.errors import ArtifactError, ConfigError, PgolfError, TrainingError
from pgolf.quant.packing import pack_model_artifact
from pgolf.fsutil import write_bytes_atomic
from pgolf.model.gpt import GPT
from pgolf.optim.build import build_optimizers
from pgolf.quant.model_artifact import load_artifact_into_fresh_model
from pgolf.runtime import Runtime
from pgolf.train import checkpoint as checkpoint_module
from pgolf.train.checkpoint import (CheckpointManager, TrainingPosition, check_room_for_run, complete_checkpoints,
                                    newest_checkpoint)

MODEL = ModelConfig(vocab_size=64, num_layers=1, model_dim=32, num_heads=4, num_kv_heads=2)
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_distributed=False)


class WritesMarker:
    """Unpickling this runs code that creates ``marker``: proof of whether a loader unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def state(tmp_path):
    """(model, optimizers, loader) after one real optimizer step, so the optimizers hold state."""
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, np.random.default_rng(0).integers(0, 64, size=2000))
    torch.manual_seed(0)
    model = GPT(MODEL)
    optimizers = build_optimizers(model, OptimConfig(), tie_embeddings=True,
                                  control_patterns=MODEL.control_tensor_name_patterns)
    loader = DistributedTokenLoader([path], 0, 1, "cpu")
    x, y = loader.next_batch(8 * 16, 16, 8)
    model(x, y).backward()
    for opt in optimizers:
        opt.step()
    return model, optimizers, loader


def save(run_dir, state, step, keep=5, logger=None):
    model, optimizers, loader = state
    checkpoints = CheckpointManager(run_dir, Config(train=TrainConfig(checkpoint_keep=keep)), CPU,
                                    logger or RecordingLogger())
    return checkpoints.save(model, optimizers, loader, None, TrainingPosition(step=step, last_finite_loss=1.0))


def restore(checkpoint, state):
    model, optimizers, loader = state
    checkpoints = CheckpointManager(checkpoint.parents[1], Config(), CPU, RecordingLogger(), resume_from=checkpoint)
    return checkpoints.restore(model, optimizers, loader, None)


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_partial(tmp_path, state, monkeypatch):
    run_dir = tmp_path / "run"
    save(run_dir, state, 1)
    real_write = checkpoint_module.write_bytes_atomic
    written = []

    def fail_on_second_file(path, data, **kwargs):
        if written:
            raise KeyboardInterrupt  # killed between two files
        written.append(path)
        return real_write(path, data, **kwargs)

    monkeypatch.setattr(checkpoint_module, "write_bytes_atomic", fail_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        save(run_dir, state, 2)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000001"]
    assert newest_checkpoint(run_dir).name == "step_00000001"


def test_a_killed_writer_leaves_only_an_ignored_partial_that_the_next_save_removes(tmp_path, state):
    run_dir = tmp_path / "run"
    save(run_dir, state, 1)
    # What SIGKILL in the middle of checkpoint 2 leaves: its .partial directory with some files.
    partial = run_dir / "checkpoints" / "step_00000002.partial"
    partial.mkdir()
    (partial / "model.pgtc").write_bytes(b"PGTC half")
    # ... and a complete-looking name without its manifest (killed while being retired).
    (run_dir / "checkpoints" / "step_00000009").mkdir()
    assert newest_checkpoint(run_dir).name == "step_00000001"
    save(run_dir, state, 3)
    assert not partial.exists()
    assert [c.name for c in complete_checkpoints(run_dir)] == ["step_00000001", "step_00000003"]


def test_keep_retires_the_oldest(tmp_path, state):
    for step in (1, 2, 3, 4):
        save(tmp_path / "run", state, step, keep=2)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000003", "step_00000004"]


def enospc_after(limit):
    """An ``os.write`` that writes up to ``limit`` bytes in all, then fails like a full disk."""
    real_write, budget = os.write, [limit]

    def write(fd, data):
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        count = real_write(fd, bytes(data[:budget[0]]))
        budget[0] -= count
        return count

    return write


def test_full_disk_during_a_checkpoint_leaves_no_partial_file(tmp_path, state, monkeypatch):
    run_dir = tmp_path / "run"
    save(run_dir, state, 1)
    before = {p: p.read_bytes() for p in (run_dir / "checkpoints").rglob("*") if p.is_file()}
    monkeypatch.setattr("pgolf.fsutil.os.write", enospc_after(100_000))
    with pytest.raises(TrainingError, match=r"no space left.*last complete checkpoint"):
        save(run_dir, state, 2)
    after = {p: p.read_bytes() for p in (run_dir / "checkpoints").rglob("*") if p.is_file()}
    assert after == before  # nothing new, nothing half-written, the old checkpoint untouched
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_00000001"]
    monkeypatch.undo()
    restore(newest_checkpoint(run_dir), state)


def test_full_disk_during_an_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "artifact.bin"
    write_bytes_atomic(target, b"old contents")
    monkeypatch.setattr("pgolf.fsutil.os.write", enospc_after(1000))
    with pytest.raises(PgolfError, match=f"could not write {target}.*no space left"):
        write_bytes_atomic(target, os.urandom(50_000), overwrite=True)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in target.parent.iterdir()] == ["artifact.bin"]


def test_too_little_disk_space_is_refused_before_training(tmp_path, state, monkeypatch):
    model, optimizers, _ = state
    cfg = Config(train=TrainConfig(checkpoint_every=100, checkpoint_keep=3))
    monkeypatch.setattr(checkpoint_module, "free_disk_bytes", lambda path: 10**12)
    check_room_for_run(tmp_path, cfg, CPU, model, optimizers)
    monkeypatch.setattr(checkpoint_module, "free_disk_bytes", lambda path: 1000)
    with pytest.raises(ConfigError, match=r"not enough disk space.*4 checkpoints.*CHECKPOINT_KEEP=3"):
        check_room_for_run(tmp_path, cfg, CPU, model, optimizers)


@pytest.mark.parametrize("name", ["model.pgtc", "rank_00000.pgtc"])
def test_truncated_flipped_and_pickled_checkpoint_files_are_refused_by_name(tmp_path, state, name):
    checkpoint = save(tmp_path / "run", state, 1)
    path = checkpoint / name
    good = path.read_bytes()
    marker = tmp_path / "marker"
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    same_size_pickle = pickle.dumps(WritesMarker(marker)).ljust(len(good), b" ")
    for damaged, message in [(good[:-10], "truncated or replaced"), (bytes(flipped), "digest does not match"),
                             (same_size_pickle, "pickle")]:
        path.write_bytes(damaged)
        with pytest.raises(ArtifactError, match=message) as error:
            restore(checkpoint, state)
        assert str(path) in str(error.value)
    assert not marker.exists()
    path.write_bytes(good)
    assert restore(checkpoint, state).step == 1


def test_a_damaged_manifest_is_refused_by_name(tmp_path, state):
    checkpoint = save(tmp_path / "run", state, 1)
    (checkpoint / "manifest.json").write_text("{not json")
    with pytest.raises(TrainingError, match="manifest.json is unreadable"):
        restore(checkpoint, state)


def test_a_checkpoint_from_another_world_size_is_refused(tmp_path, state):
    checkpoint = save(tmp_path / "run", state, 1)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    (checkpoint / "manifest.json").write_text(json.dumps({**manifest, "world_size": 8}))
    with pytest.raises(ConfigError, match="written by 8 processes"):
        restore(checkpoint, state)


def test_damaged_and_pickled_artifacts_are_refused_by_name(tmp_path):
    cfg = Config(model=MODEL)
    torch.manual_seed(0)
    blob = pack_model_artifact(GPT(MODEL).state_dict(), QuantConfig())
    path = tmp_path / "final_model.int8.ptz"
    marker = tmp_path / "marker"
    flipped = bytearray(blob)
    flipped[len(blob) // 3] ^= 0x40
    for damaged in (blob[: len(blob) // 2], bytes(flipped), pickle.dumps({"w": WritesMarker(marker)})):
        path.write_bytes(damaged)
        with pytest.raises(ArtifactError) as error:
            load_artifact_into_fresh_model(path, cfg.model, Runtime(torch.device("cpu")))
        assert str(path) in str(error.value)
    assert not marker.exists()
    path.write_bytes(blob)
    load_artifact_into_fresh_model(path, cfg.model, Runtime(torch.device("cpu")))


def test_an_unwritable_runs_dir_is_refused_before_anything_runs(tmp_path, monkeypatch):
    from pgolf.run import main as run_main

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PGOLF_AUTO_RESUME"):
        monkeypatch.delenv(key, raising=False)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cfg = Config(model=MODEL, run=RunConfig(runs_dir=str(blocker / "runs"), run_id="r"))
    with pytest.raises(ConfigError, match=f"cannot create the run directory {blocker}.*writable"):
        run_main(cfg, echo=False)
