"""Byte shuffle and the compressors: exact formats, round trips, damage detection, 'auto'."""

import lzma
import sys
import zlib

import brotli
import numpy as np
import pytest
import zstandard

from pgolf.artifact.compress import (
    COMPRESSOR_IDS,
    COMPRESSORS,
    available_compressor_names,
    byte_shuffle,
    byte_unshuffle,
    choose_smallest_compression,
    compress_model_bytes,
    decompress_model_bytes,
    describe_compressed_blob,
)
from pgolf.errors import ArtifactError, ConfigError, PgolfError


def shuffle_reference(data: bytes, stride: int) -> bytes:
    return b"BSHF" + bytes([stride]) + b"".join(data[plane::stride] for plane in range(stride))


def model_like_bytes(n: int = 20_000, seed: int = 0) -> bytes:
    """fp16 values of a Gaussian: compressible high bytes, noisy low bytes, like real weights."""
    values = np.random.default_rng(seed).normal(0, 0.02, n).astype(np.float16)
    return values.tobytes()


def test_byte_shuffle_exact_small_example():
    assert byte_shuffle(b"abcdefg", 2) == b"BSHF\x02acegbdf"
    assert byte_shuffle(b"abcdefg", 3) == b"BSHF\x03adgbecf"
    assert byte_shuffle(b"", 2) == b"BSHF\x02"


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 7, 255])
@pytest.mark.parametrize("length", [0, 1, 2, 5, 254, 1001])
def test_byte_shuffle_matches_reference_and_inverts(stride, length):
    data = bytes(np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8))
    shuffled = byte_shuffle(data, stride)
    assert shuffled == shuffle_reference(data, stride)
    assert byte_unshuffle(shuffled) == data


def test_byte_shuffle_rejects_bad_input():
    for stride in (0, 256, -1, 2.0):
        with pytest.raises(ConfigError):
            byte_shuffle(b"abc", stride)
    for damaged in (b"", b"BSHF", b"XSHF\x02ab", b"BSHF\x00ab"):
        with pytest.raises(ArtifactError):
            byte_unshuffle(damaged)


def test_compressor_table_and_ids():
    assert list(COMPRESSORS) == ["zlib", "lzma", "brotli", "zstd"]
    assert COMPRESSOR_IDS == {"zlib": 1, "lzma": 2, "brotli": 3, "zstd": 4, "pergroup": 5, "pergroup_lrzip": 6}
    assert available_compressor_names() == ["zlib", "lzma", "brotli", "zstd"]


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("stride", [0, 2, 3])
def test_every_compressor_round_trips_with_frame_header(compressor, stride):
    data = model_like_bytes()
    blob = compress_model_bytes(data, compressor, stride)
    assert blob[:5] == b"PGZ" + bytes([COMPRESSOR_IDS[compressor], stride])
    assert describe_compressed_blob(blob) == (compressor, stride)
    assert decompress_model_bytes(blob) == data
    assert decompress_model_bytes(compress_model_bytes(b"", compressor, stride)) == b""


def test_streams_are_the_standard_formats_at_the_strongest_settings():
    data = model_like_bytes()
    standard_decoders = {
        "zlib": zlib.decompress,
        "lzma": lambda blob: lzma.decompress(blob, format=lzma.FORMAT_XZ),
        "brotli": brotli.decompress,
        "zstd": lambda blob: zstandard.ZstdDecompressor().decompress(blob),
    }
    for name, decode in standard_decoders.items():
        assert decode(compress_model_bytes(data, name)[5:]) == data
    assert compress_model_bytes(data, "zlib")[5:] == zlib.compress(data, 9)
    assert compress_model_bytes(data, "lzma")[5:11] == b"\xfd7zXZ\x00"  # xz container magic
    assert compress_model_bytes(data, "brotli")[5:] == brotli.compress(data, quality=11, lgwin=24)


def test_shuffle_helps_two_byte_data():
    data = model_like_bytes(50_000)
    assert len(compress_model_bytes(data, "zlib", 2)) < len(compress_model_bytes(data, "zlib", 0))


def test_unknown_compressor_lists_valid_names():
    with pytest.raises(ConfigError, match="zlib, lzma, brotli, zstd"):
        compress_model_bytes(b"abc", "gzip")
    with pytest.raises(ConfigError):
        compress_model_bytes(b"abc", "zlib", 300)


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_truncated_blobs_are_rejected(compressor):
    blob = compress_model_bytes(model_like_bytes(2_000), compressor, 2)
    for length in [0, 1, 3, 4, 5, 6, 10, len(blob) // 2, len(blob) - 1]:
        with pytest.raises(ArtifactError):
            decompress_model_bytes(blob[:length])


@pytest.mark.parametrize("compressor", ["zlib", "lzma", "zstd"])
def test_checksummed_streams_reject_every_flipped_byte(compressor):
    # brotli has no checksum of its own; the container's sha256 covers it (see test_pack).
    blob = compress_model_bytes(model_like_bytes(300), compressor, 0)
    for position in range(len(blob)):
        damaged = bytearray(blob)
        damaged[position] ^= 0xFF
        with pytest.raises(ArtifactError):
            decompress_model_bytes(bytes(damaged))


def test_frame_stride_must_agree_with_shuffled_data():
    blob = bytearray(compress_model_bytes(b"abcdef", "zlib", 2))
    blob[4] = 3
    with pytest.raises(ArtifactError, match="stride"):
        decompress_model_bytes(bytes(blob))


def test_foreign_data_and_unknown_ids_are_rejected():
    with pytest.raises(ArtifactError, match="pickle"):
        decompress_model_bytes(zlib.compress(b"\x80\x04K\x01."))
    with pytest.raises(ArtifactError, match="unknown compressor id"):
        decompress_model_bytes(b"PGZ\x09\x00abc")


def test_auto_picks_the_smallest_of_all_pairs():
    data = model_like_bytes(5_000)
    blob, name, stride = choose_smallest_compression(data)
    sizes = {(n, s): len(compress_model_bytes(data, n, s)) for n in COMPRESSORS for s in (0, 2)}
    assert len(blob) == min(sizes.values())
    assert sizes[(name, stride)] == len(blob)
    assert describe_compressed_blob(blob) == (name, stride)
    assert decompress_model_bytes(compress_model_bytes(data, "auto")) == data
    restricted, name, _ = choose_smallest_compression(data, compressors=["zlib"], strides=(0,))
    assert name == "zlib" and restricted == compress_model_bytes(data, "zlib", 0)
    with pytest.raises(ConfigError):
        choose_smallest_compression(data, compressors=[])


@pytest.mark.parametrize("compressor, module, hint", [("brotli", "brotli", "pip install brotli"), ("zstd", "zstandard", "pip install zstandard")])
def test_missing_optional_library_says_how_to_install(monkeypatch, compressor, module, hint):
    blob = compress_model_bytes(b"abc", compressor)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    assert compressor not in available_compressor_names()
    with pytest.raises(PgolfError, match=hint):
        compress_model_bytes(b"abc", compressor)
    with pytest.raises(PgolfError, match=hint):
        decompress_model_bytes(blob)
    assert decompress_model_bytes(compress_model_bytes(b"abc", "auto")) == b"abc"
