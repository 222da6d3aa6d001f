"""The shuffled-sequence loader (SPEC 4.3): per-rank determinism, rank-disjoint shards, every offset
once per epoch, shifted targets, no validation data.

Shard k holds the tokens ``1000*k, 1000*k + 1, ...``, so every row tells which shard and which start
offset it came from.
"""

import typing

import numpy as np
import pytest
import torch

from pgolf.config import TrainConfig
from pgolf.data.shards import write_shard
from pgolf.data.shuffled import ShuffledSequenceLoader
from pgolf.errors import ConfigError, DataError
from pgolf.data.run_data import TRAIN_LOADERS

SEQ_LEN = 8
SEQS_PER_SHARD = 6  # shard length 7 * SEQ_LEN: 6 windows of SEQ_LEN + 1 for every phase in [0, SEQ_LEN - 1]
SHARD_TOKENS = (SEQS_PER_SHARD + 1) * SEQ_LEN


@pytest.fixture
def shards(tmp_path):
    paths = []
    for k in range(5):
        path = tmp_path / f"fineweb_train_{k:06d}.bin"
        write_shard(path, np.arange(1000 * k, 1000 * k + SHARD_TOKENS))
        paths.append(path)
    return paths


def origins(x):
    """(shard index, start offset) of every row."""
    first = x[:, 0].tolist()
    return [(value // 1000, value % 1000) for value in first]


def draw(loader, batches, rows=4, world_size=1):
    return [loader.next_batch(rows * SEQ_LEN * world_size, SEQ_LEN, 1) for _ in range(batches)]


def test_rows_are_contiguous_windows_and_targets_are_shifted(shards):
    loader = ShuffledSequenceLoader(shards, 0, 1, "cpu")
    for x, y in draw(loader, 3):
        assert x.dtype == torch.int64 and x.shape == (4, SEQ_LEN) and y.shape == (4, SEQ_LEN)
        assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, SEQ_LEN - 1, dtype=torch.int64))
        assert torch.equal(y, x + 1)  # the next token of the same shard
        for shard, start in origins(x):
            assert start + SEQ_LEN + 1 <= SHARD_TOKENS


def test_every_offset_is_used_once_per_epoch(shards):
    """An epoch is 5 shards x 6 windows = 30 rows; each shard uses one phase and all its windows."""
    loader = ShuffledSequenceLoader(shards, 0, 1, "cpu")
    rows = [origin for x, _ in draw(loader, 12, rows=5) for origin in origins(x)]  # two epochs
    for epoch in (rows[:30], rows[30:]):
        assert len(set(epoch)) == 30
        for shard in range(5):
            starts = sorted(start for s, start in epoch if s == shard)
            phase = starts[0]
            assert 0 <= phase < SEQ_LEN
            assert starts == [phase + k * SEQ_LEN for k in range(SEQS_PER_SHARD)]
    # Reshuffled between epochs: the order (and usually the phases) change.
    assert rows[:30] != rows[30:]


def test_draws_are_not_sequential(shards):
    rows = [origin for x, _ in draw(ShuffledSequenceLoader(shards, 0, 1, "cpu"), 3, rows=5) for origin in origins(x)]
    assert len({shard for shard, _ in rows[:10]}) > 1
    assert rows != sorted(rows)


def test_deterministic_per_rank_and_reset_replays(shards):
    first = draw(ShuffledSequenceLoader(shards, 1, 2, "cpu"), 5, world_size=2)
    loader = ShuffledSequenceLoader(shards, 1, 2, "cpu")
    second = draw(loader, 5, world_size=2)
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    loader.reset()
    for (x1, _), (x2, _) in zip(first, draw(loader, 5, world_size=2)):
        assert torch.equal(x1, x2)


def test_ranks_own_disjoint_shards_and_use_rank_seeds(shards):
    world_size = 2
    seen = {}
    for rank in range(world_size):
        loader = ShuffledSequenceLoader(list(reversed(shards)), rank, world_size, "cpu")  # order given does not matter
        seen[rank] = {shard for x, _ in draw(loader, 6, world_size=world_size) for shard, _ in origins(x)}
    assert seen[0] == {0, 2, 4} and seen[1] == {1, 3}
    # Rank r's RNG is PCG64(r): its first shard phase is the first draw of that generator.
    rng = np.random.Generator(np.random.PCG64(1))
    expected_phase = int(rng.integers(0, SEQ_LEN))
    x, _ = ShuffledSequenceLoader(shards, 1, 2, "cpu").next_batch(4 * SEQ_LEN * 2, SEQ_LEN, 1)
    starts_in_shard_1 = [start for shard, start in origins(x) if shard == 1]
    assert all(start % SEQ_LEN == expected_phase for start in starts_in_shard_1)


def test_batch_size_follows_world_size_and_accumulation(shards):
    loader = ShuffledSequenceLoader(shards, 0, 2, "cpu")
    x, _ = loader.next_batch(global_tokens=2 * 2 * 3 * SEQ_LEN, seq_len=SEQ_LEN, grad_accum_steps=2)
    assert x.shape == (3, SEQ_LEN)
    with pytest.raises(ConfigError, match="TRAIN_BATCH_TOKENS"):
        loader.next_batch(global_tokens=SEQ_LEN, seq_len=SEQ_LEN, grad_accum_steps=2)


def test_refuses_validation_files_and_ranks_without_shards(shards, tmp_path):
    val = tmp_path / "fineweb_val_000000.bin"
    write_shard(val, np.arange(100))
    with pytest.raises(DataError, match="validation"):
        ShuffledSequenceLoader(shards + [val], 0, 1, "cpu")
    with pytest.raises(DataError, match="rank 5 has none"):
        ShuffledSequenceLoader(shards, 5, 6, "cpu")
    with pytest.raises(ConfigError, match="rank"):
        ShuffledSequenceLoader(shards, 2, 2, "cpu")


def test_too_short_shards_and_vocab_are_checked(tmp_path):
    short = tmp_path / "fineweb_train_000000.bin"
    write_shard(short, np.arange(SEQ_LEN))  # fewer than SEQ_LEN + 1 tokens
    with pytest.raises(DataError, match="TRAIN_SEQ_LEN"):
        ShuffledSequenceLoader([short], 0, 1, "cpu").next_batch(SEQ_LEN, SEQ_LEN, 1)
    with pytest.raises(DataError, match="vocab size"):
        ShuffledSequenceLoader([short], 0, 1, "cpu", vocab_size=4)


def test_run_offers_both_loaders_by_config_name():
    choices = typing.get_args(typing.get_type_hints(TrainConfig)["train_loader"])
    assert set(TRAIN_LOADERS) == set(choices)
    assert TRAIN_LOADERS["shuffled"] is ShuffledSequenceLoader
