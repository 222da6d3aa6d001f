"""Two gloo processes must train and evaluate like one process (the 8-GPU maths via accumulation).

One process runs 8 micro-batches per step; two processes run 4 each and average gradients with DDP.
The data each micro-batch sees is identical, so losses and evaluation sums agree up to float rounding
of the different reduction order; so must two processes with sharded Muon (no DDP). Tolerance: 1e-5 relative on the losses of 3 steps and on the
evaluation loss sum afterwards; token and byte counts must be equal.
"""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pgolf.config import ModelConfig, OptimConfig, TrainConfig
from pgolf.data.shards import write_shard
from pgolf.data.tokenizer import ByteTables

VOCAB = 64
MODEL = ModelConfig(vocab_size=VOCAB, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)
TRAIN = TrainConfig(train_batch_tokens=8 * 2 * 16, train_seq_len=16, warmup_steps=0, max_wallclock_seconds=0)
STEPS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _byte_tables() -> ByteTables:
    generator = torch.Generator().manual_seed(0)
    boundary = torch.zeros(VOCAB, dtype=torch.bool)
    boundary[1] = True
    return ByteTables(base_bytes=torch.randint(1, 4, (VOCAB,), generator=generator, dtype=torch.int16),
                      has_leading_space=torch.rand(VOCAB, generator=generator) < 0.5, is_boundary=boundary)


def _worker(rank: int, world_size: int, port: int, data_dir: str, out_dir: str, sharded: bool = False) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PGOLF_DEVICE="cpu")
    if world_size == 1:
        for key in ("RANK", "WORLD_SIZE"):
            os.environ.pop(key)
    torch.set_num_threads(1)
    from pgolf.config import Config
    from pgolf.data.loader import DistributedTokenLoader
    from pgolf.dist import all_reduce_sum_, init_distributed, shutdown_distributed
    from pgolf.eval.bpb import evaluate_bpb
    from pgolf.model.gpt import build_model
    from pgolf.optim.build import build_optimizers
    from pgolf.train.wrap import uses_sharded_muon, wrap_for_training
    from pgolf.train.loop import TrainingParts, run_training_step

    ctx = init_distributed()
    torch.manual_seed(0)
    model = build_model(MODEL, ctx.runtime)
    optim = OptimConfig(muon_sharded=sharded, grad_clip_norm=0.5)
    optimizers = build_optimizers(model, optim, tie_embeddings=True,
                                  control_patterns=MODEL.control_tensor_name_patterns, rank=ctx.rank,
                                  world_size=ctx.world_size)
    loader = DistributedTokenLoader([Path(data_dir) / "fineweb_train_000000.bin"], ctx.rank, ctx.world_size, ctx.device)
    cfg = Config(model=MODEL, train=TRAIN)
    use_shards = uses_sharded_muon(optimizers)
    assert use_shards == (sharded and world_size > 1)
    parts = TrainingParts(model, wrap_for_training(model, cfg.model, cfg.train.compile, ctx, sharded_muon=use_shards), optimizers, loader,
                          sharded_gradients=use_shards)
    losses = []
    for _ in range(STEPS):
        loss = run_training_step(parts, TRAIN, optim, ctx, lr_mult=1.0, muon_momentum=0.9)
        losses.append(all_reduce_sum_(loss.clone()).item() / ctx.world_size)
    val = torch.from_numpy(np.fromfile(Path(data_dir) / "val.npy", dtype=np.int64))
    sums = evaluate_bpb(model, val, seq_len=16, batch_sequences=3, target_bytes=_byte_tables(), runtime=ctx.runtime,
                        rank=ctx.rank, world_size=ctx.world_size)
    if ctx.is_main:
        Path(out_dir, f"world{world_size}{'_sharded' if sharded else ''}.json").write_text(json.dumps({"losses": losses, **sums.as_dict()}))
    shutdown_distributed()


def _run(world_size: int, data_dir: Path, out_dir: Path, sharded: bool = False) -> dict:
    mp.spawn(_worker, args=(world_size, _free_port(), str(data_dir), str(out_dir), sharded), nprocs=world_size,
             join=True)
    return json.loads((out_dir / f"world{world_size}{'_sharded' if sharded else ''}.json").read_text())


@pytest.mark.timeout(180)
def test_two_gloo_processes_match_one_process(tmp_path):
    rng = np.random.default_rng(0)
    # A learnable stream (a repeating pattern with noise) so that training actually moves the loss.
    pattern = rng.integers(0, VOCAB, size=37)
    stream = np.tile(pattern, 400)
    noise = rng.random(stream.size) < 0.1
    stream[noise] = rng.integers(0, VOCAB, size=noise.sum())
    write_shard(tmp_path / "fineweb_train_000000.bin", stream)
    rng.integers(0, VOCAB, size=16 * 10 + 1).astype(np.int64).tofile(tmp_path / "val.npy")
    one = _run(1, tmp_path, tmp_path)
    two = _run(2, tmp_path, tmp_path)
    assert one["losses"][-1] < one["losses"][0]  # training moved
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert two["token_count"] == one["token_count"] == 160
    assert two["byte_count"] == one["byte_count"]
    np.testing.assert_allclose(two["loss_sum"], one["loss_sum"], rtol=1e-5)
    # MUON_SHARDED=1: no DDP; reduce-scatter + local Newton-Schulz + all-gather, one flat all-reduce for
    # the Adam groups, clipping across shards. Same training as one process.
    sharded = _run(2, tmp_path, tmp_path, sharded=True)
    np.testing.assert_allclose(sharded["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(sharded["loss_sum"], one["loss_sum"], rtol=1e-5)
