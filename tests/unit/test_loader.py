"""Training loader (SPEC 2.3) against a plain reference, split isolation, validation tokens (SPEC 2.8)."""

import shutil

import numpy as np
import pytest
import torch

from pgolf.data.loader import DistributedTokenLoader, TokenStream, assert_disjoint_splits, load_validation_tokens
from pgolf.data.shards import write_shard
from pgolf.errors import ConfigError, DataError


def _make_train_shards(tmp_path, sizes, seed=0):
    """Shards of random ids with the given token counts; returns (files, concatenated tokens)."""
    rng = np.random.default_rng(seed)
    files, parts = [], []
    for index, size in enumerate(sizes):
        tokens = rng.integers(0, 1000, size=size)
        files.append(write_shard(tmp_path / f"fineweb_train_{index:06d}.bin", tokens))
        parts.append(tokens)
    return files, np.concatenate(parts)


def _reference_stream(all_tokens, start, n):
    """Tokens [start, start+n) of the endless wrap-around stream, by index arithmetic."""
    return all_tokens[np.arange(start, start + n) % len(all_tokens)]


def test_token_stream_spans_shards_and_wraps(tmp_path):
    files, all_tokens = _make_train_shards(tmp_path, [7, 3, 11])
    stream = TokenStream(files)
    taken = 0
    for n in [5, 1, 9, 0, 30, 2, 64]:  # crosses every shard boundary and wraps several times
        chunk = stream.take(n)
        assert chunk.dtype == np.uint16 and chunk.shape == (n,)
        np.testing.assert_array_equal(chunk, _reference_stream(all_tokens, taken, n))
        taken += n


@pytest.mark.parametrize("world_size, grad_accum", [(1, 1), (1, 4), (2, 2), (4, 1), (3, 1)])
def test_next_batch_matches_reference(tmp_path, world_size, grad_accum):
    files, all_tokens = _make_train_shards(tmp_path, [50, 13, 77, 29])
    seq_len, global_tokens = 4, 8 * world_size * grad_accum  # local = 8 tokens = 2 sequences per rank
    loaders = [DistributedTokenLoader(files, rank, world_size, "cpu") for rank in range(world_size)]
    start = 0
    for _ in range(12):
        local = global_tokens // (world_size * grad_accum)
        for rank, loader in enumerate(loaders):
            x, y = loader.next_batch(global_tokens, seq_len, grad_accum)
            span = _reference_stream(all_tokens, start + rank * (local + 1), local + 1)
            assert x.dtype == torch.int64 and y.dtype == torch.int64
            assert x.shape == y.shape == (local // seq_len, seq_len)
            assert x.flatten().tolist() == span[:-1].tolist()
            assert y.flatten().tolist() == span[1:].tolist()
        start += (local + 1) * world_size


def test_ranks_are_disjoint_and_cover_the_stream(tmp_path):
    files, all_tokens = _make_train_shards(tmp_path, [40, 40])
    world_size, seq_len = 4, 2
    spans = []
    for rank in range(world_size):
        x, y = DistributedTokenLoader(files, rank, world_size, "cpu").next_batch(8 * world_size, seq_len, 1)
        spans.append(torch.cat([x.flatten(), y.flatten()[-1:]]).tolist())
    assert sum(spans, []) == all_tokens[: 9 * world_size].tolist()


def test_deterministic_and_reset(tmp_path):
    files, _ = _make_train_shards(tmp_path, [30, 30])
    first = DistributedTokenLoader(files, 0, 1, "cpu")
    batches = [first.next_batch(8, 4, 1) for _ in range(5)]
    second = DistributedTokenLoader(files, 0, 1, "cpu")
    for x, y in batches:
        x2, y2 = second.next_batch(8, 4, 1)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    first.reset()
    x, y = first.next_batch(8, 4, 1)
    assert torch.equal(x, batches[0][0]) and torch.equal(y, batches[0][1])


def test_batch_not_multiple_of_seq_len(tmp_path):
    files, _ = _make_train_shards(tmp_path, [100])
    loader = DistributedTokenLoader(files, 0, 2, "cpu")
    with pytest.raises(ConfigError) as info:
        loader.next_batch(40, 8, 2)  # local = 10, not a multiple of 8
    for expected in ("TRAIN_BATCH_TOKENS=40", "TRAIN_SEQ_LEN=8", "world size 2"):
        assert expected in str(info.value)
    with pytest.raises(ConfigError):
        loader.next_batch(3, 8, 2)  # local = 0
    with pytest.raises(ConfigError, match="rank"):
        DistributedTokenLoader(files, 2, 2, "cpu")


def test_training_loader_refuses_validation_files(tmp_path):
    files, _ = _make_train_shards(tmp_path, [10])
    val = write_shard(tmp_path / "fineweb_val_000000.bin", [1, 2, 3])
    with pytest.raises(DataError, match="validation data never reaches training") as info:
        DistributedTokenLoader([*files, val], 0, 1, "cpu")
    assert "fineweb_val_000000.bin" in str(info.value)


def test_vocab_check_in_training_loader(tmp_path):
    path = write_shard(tmp_path / "fineweb_train_000000.bin", [1, 2, 5000])
    with pytest.raises(DataError, match="position 2"):
        DistributedTokenLoader([path], 0, 1, "cpu", vocab_size=1024)


def test_assert_disjoint_splits(tmp_path):
    files, _ = _make_train_shards(tmp_path, [20, 20])
    val = write_shard(tmp_path / "fineweb_val_000000.bin", [9, 8, 7])
    assert_disjoint_splits(files, [val])
    with pytest.raises(DataError, match="both a training and a validation file"):
        assert_disjoint_splits(files, [tmp_path / "." / files[1].name])
    copy = tmp_path / "copied" / "fineweb_val_000001.bin"
    copy.parent.mkdir()
    shutil.copy(files[0], copy)
    with pytest.raises(DataError, match="same content") as info:
        assert_disjoint_splits(files, [val, copy])
    assert files[0].name in str(info.value)


def test_disjoint_splits_fingerprint_covers_large_files(tmp_path):
    tokens = np.arange(200_000) % 1000  # 400 KB: head and tail hashed, middle ignored
    train = write_shard(tmp_path / "fineweb_train_000000.bin", tokens)
    changed_tail = tokens.copy()
    changed_tail[-1] += 1
    assert_disjoint_splits([train], [write_shard(tmp_path / "fineweb_val_000000.bin", changed_tail)])


def test_load_validation_tokens_truncates(tmp_path):
    a = write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(10))
    b = write_shard(tmp_path / "fineweb_val_000001.bin", np.arange(10, 23))
    tokens = load_validation_tokens([a, b], 4)  # N = 23 -> (22 // 4) * 4 + 1 = 21
    assert tokens.dtype == torch.int64
    assert tokens.tolist() == list(range(21))
    assert load_validation_tokens([a, b], 11).tolist() == list(range(23))  # exactly 2 sequences + 1


def test_load_validation_tokens_too_few(tmp_path):
    a = write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(8))
    assert load_validation_tokens([a], 7).tolist() == list(range(8))
    with pytest.raises(DataError) as info:
        load_validation_tokens([a], 8)
    assert "8 tokens" in str(info.value) and "EVAL_SEQ_LEN" in str(info.value)
    with pytest.raises(DataError):
        load_validation_tokens([], 8)
    with pytest.raises(DataError, match="vocab size 5"):
        load_validation_tokens([a], 2, vocab_size=5)
