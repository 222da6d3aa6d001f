"""Shard format: round trip, the exact bytes on disk, every corruption case, token-id checks, globbing."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.data.shards import (
    SHARD_HEADER_INTS,
    SHARD_MAGIC,
    SHARD_VERSION,
    check_token_ids,
    find_shards,
    read_shard,
    read_shard_header,
    write_shard,
)
from pgolf.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _raw_shard_bytes(tokens, *, magic=SHARD_MAGIC, version=SHARD_VERSION, count=None) -> bytes:
    """A shard built by hand with struct-free numpy, independent of write_shard."""
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[:3] = [magic, version, len(tokens) if count is None else count]
    return header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes()


def test_round_trip_and_exact_layout(tmp_path):
    tokens = np.array([1, 0, 65535, 7, 1024, 300], dtype=np.int64)
    path = write_shard(tmp_path / "fineweb_train_000000.bin", tokens)
    assert path.read_bytes() == _raw_shard_bytes(tokens)
    assert path.stat().st_size == 1024 + 2 * len(tokens)
    assert read_shard_header(path) == len(tokens)
    for mmap in (True, False):
        loaded = read_shard(path, mmap=mmap)
        assert loaded.dtype == np.uint16
        np.testing.assert_array_equal(loaded, tokens)


def test_write_accepts_lists_and_tensors(tmp_path):
    write_shard(tmp_path / "a.bin", [3, 4, 5])
    write_shard(tmp_path / "b.bin", torch.tensor([3, 4, 5], dtype=torch.int32))
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_write_refuses_overwrite(tmp_path):
    path = write_shard(tmp_path / "s.bin", [1, 2])
    with pytest.raises(DataError, match="already exists"):
        write_shard(path, [3, 4])
    np.testing.assert_array_equal(read_shard(path), [1, 2])


@pytest.mark.parametrize(
    "tokens, message",
    [([], "zero tokens"), ([1, 65536], "65535"), ([-1, 2], "65535"), ([[1, 2], [3, 4]], "1-D"), ([1.5, 2.0], "integers")],
)
def test_write_rejects_bad_tokens(tmp_path, tokens, message):
    with pytest.raises(DataError, match=message):
        write_shard(tmp_path / "s.bin", tokens)
    assert not (tmp_path / "s.bin").exists()


def _corrupt_cases(tokens):
    good = _raw_shard_bytes(tokens)
    return {
        "empty": (b"", "empty"),
        "short header": (good[:100], "shorter than the 1024-byte header"),
        "header only": (good[:1024], "truncated"),
        "wrong magic": (_raw_shard_bytes(tokens, magic=12345), "magic 12345"),
        "wrong version": (_raw_shard_bytes(tokens, version=2), "version 2"),
        "truncated payload": (good[:-2], "truncated"),
        "trailing bytes": (good + b"\x00\x00\x00", "3 trailing bytes"),
        "zero tokens": (_raw_shard_bytes([], count=0), "zero tokens"),
        "negative count": (_raw_shard_bytes(tokens, count=-5), "negative"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases([1, 2, 3])))
def test_every_corruption_has_its_own_error(tmp_path, case):
    data, message = _corrupt_cases([1, 2, 3])[case]
    path = tmp_path / "fineweb_val_000000.bin"
    path.write_bytes(data)
    for reader in (read_shard_header, read_shard):
        with pytest.raises(DataError, match=message) as info:
            reader(path)
        assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_shard(tmp_path / "nope.bin")


def test_check_token_ids_names_file_position_and_fix(tmp_path):
    check_token_ids(np.array([0, 1023], dtype=np.uint16), 1024, "x.bin")
    check_token_ids(np.zeros(0, dtype=np.uint16), 1024, "x.bin")
    with pytest.raises(DataError) as info:
        check_token_ids(np.array([5, 9, 1024, 2000], dtype=np.uint16), 1024, tmp_path / "s.bin")
    message = str(info.value)
    for expected in (str(tmp_path / "s.bin"), "position 2", "token id 1024", "vocab size 1024", "VOCAB_SIZE", "TOKENIZER_PATH"):
        assert expected in message


def test_find_shards_sorted_and_split(tmp_path):
    for name in ["fineweb_train_000002.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin",
                 "fineweb_val_000001.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin", "other.bin"]:
        write_shard(tmp_path / name, [1, 2])
    assert [p.name for p in find_shards(tmp_path, "train")] == [f"fineweb_train_00000{i}.bin" for i in range(3)]
    assert [p.name for p in find_shards(str(tmp_path), "val")] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]


def test_find_shards_errors_name_directory_glob_and_remedy(tmp_path):
    with pytest.raises(DataError) as info:
        find_shards(tmp_path / "missing", "train")
    assert "missing" in str(info.value) and "fineweb_train_*.bin" in str(info.value)
    assert "pgolf data fineweb" in str(info.value) and "DATA_PATH" in str(info.value)
    write_shard(tmp_path / "fineweb_val_bytes_000000.bin", [1])
    with pytest.raises(DataError, match=r"fineweb_val_\*\.bin") as info:
        find_shards(tmp_path, "val")
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError):
        find_shards(tmp_path, "test")


def test_official_sample_shards_read():
    sample = SHARED_DATA / "fineweb-sp1024-val-sample"
    if not sample.is_dir():
        pytest.skip("shared/data is absent")
    for path, expected in [(sample / "fineweb_val_head_262145tok.bin", 262145),
                           (sample / "fineweb_val_tail_2021846tok.bin", 2021846)]:
        assert read_shard_header(path) == expected
        tokens = read_shard(path)
        check_token_ids(tokens, 1024, path)
        assert tokens[0] == 1 or "tail" in path.name  # the head starts with a document's BOS
