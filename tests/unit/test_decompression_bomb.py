"""Decompression bombs (issue 17, item 10): a small artifact that decompresses to gigabytes is refused while
decompressing, within a few MiB of memory, never after holding the whole output.

The probe was a 4.2 MB zlib artifact of 4 GiB that took 8.6 GB of memory before it was refused. Here the
bombs are 256 MiB (so a test compresses them in a second); the memory each refusal takes is measured with
tracemalloc (every bytes object the decompressors return is traced) and must stay far below the bomb."""

import lzma
import struct
import tracemalloc
import zlib

import brotli
import pytest
import torch
import zstandard

from pgolf.artifact.compress import (COMPRESSION_FRAME_MAGIC, COMPRESSOR_IDS, COMPRESSORS, _bounded_stream,
                                     compress_model_bytes, decompress_model_bytes)
from pgolf.artifact.container import pack_tensor_container
from pgolf.artifact.pack import pack_quantized_tensors, unpack_artifact_container
from pgolf.artifact.pergroup import pack_pergroup_streams, unpack_pergroup_streams
from pgolf.errors import ArtifactError

MIB = 1 << 20
BOMB_BYTES = 256 * MIB
# What a refusal may hold at its peak: the overshoot of one decompression call and the small container.
REFUSAL_PEAK_BYTES = 12 * MIB


def zero_chunks(total: int, chunk: int = 4 * MIB):
    for _ in range(total // chunk):
        yield bytes(chunk)


def stream_compress(name: str, prefix: bytes, zeros: int) -> bytes:
    """``prefix`` followed by ``zeros`` zero bytes, compressed by ``name`` without building the input."""
    if name == "zlib":
        engine = zlib.compressobj(9)
        return engine.compress(prefix) + b"".join(engine.compress(c) for c in zero_chunks(zeros)) + engine.flush()
    if name == "lzma":
        engine = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=1)
        return engine.compress(prefix) + b"".join(engine.compress(c) for c in zero_chunks(zeros)) + engine.flush()
    if name == "brotli":
        engine = brotli.Compressor(quality=1)
        return engine.process(prefix) + b"".join(engine.process(c) for c in zero_chunks(zeros)) + engine.finish()
    engine = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj()
    return engine.compress(prefix) + b"".join(engine.compress(c) for c in zero_chunks(zeros)) + engine.flush()


def frame(name: str, stream: bytes, stride: int = 0) -> bytes:
    return COMPRESSION_FRAME_MAGIC + bytes([COMPRESSOR_IDS[name], stride]) + stream


def peak_of_refusal(blob: bytes, **kwargs) -> tuple[int, str]:
    """(peak traced bytes, error message) of decompressing a blob that must be refused."""
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError) as refused:
            decompress_model_bytes(blob, **kwargs)
        return tracemalloc.get_traced_memory()[1], str(refused.value)
    finally:
        tracemalloc.stop()


SMALL_CONTAINER = pack_tensor_container({"w": torch.arange(8, dtype=torch.float32)}, {"quant": {}})


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_a_container_followed_by_a_bomb_stops_at_the_size_its_header_declares(name):
    blob = frame(name, stream_compress(name, SMALL_CONTAINER, BOMB_BYTES))
    assert len(blob) < 2 * MIB  # a small file ...
    peak, message = peak_of_refusal(blob)  # ... that would decompress to 256 MiB
    assert f"more than {len(SMALL_CONTAINER):,} bytes (what its container header declares)" in message
    assert peak < REFUSAL_PEAK_BYTES


def test_a_header_that_declares_gigabytes_is_refused_before_decompressing_them():
    header = b'{"tensors":[{"name":"w","dtype":"uint8","shape":[4294967296],"offset":0,"nbytes":4294967296}],"meta":{}}'
    prefix = struct.pack("<4sBI32s", b"PGTC", 1, len(header), bytes(32))
    blob = frame("zlib", stream_compress("zlib", prefix + header, 64 * MIB))
    peak, message = peak_of_refusal(blob)
    assert "declares 4,294,967," in message and "Refused before decompressing its tensors" in message
    assert peak < 2 * MIB


def test_a_byte_shuffled_bomb_stops_at_the_model_blob_limit():
    """A shuffled stream spreads its header over the planes, so the limit for any model blob bounds it."""
    blob = frame("zlib", stream_compress("zlib", b"BSHF\x02", BOMB_BYTES), stride=2)
    peak, message = peak_of_refusal(blob, max_bytes=4 * MIB)
    assert "pgolf's limit for a model blob" in message
    assert peak < REFUSAL_PEAK_BYTES


def test_a_pergroup_role_stream_stops_at_the_size_its_manifest_declares():
    tensors = {"blocks.0.attn.c_q.weight.q": torch.randint(-8, 8, (64, 32), dtype=torch.int8),
               "blocks.0.attn.c_q.weight.scale": torch.rand(64, dtype=torch.float16)}
    blob = pack_quantized_tensors(tensors, {}, "pergroup", 2)
    streams = unpack_pergroup_streams(blob[5:])
    bomb = frame("zlib", stream_compress("zlib", b"", BOMB_BYTES))
    tampered = blob[:5] + pack_pergroup_streams([streams[0], bomb])
    peak, message = peak_of_refusal(tampered)
    assert f"more than {64 * 32:,} bytes" in message
    assert peak < REFUSAL_PEAK_BYTES


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
@pytest.mark.parametrize("stride", [0, 2])
def test_honest_artifacts_still_load_exactly(name, stride):
    tensors = {"w.q": torch.randint(-100, 100, (300, 70), dtype=torch.int8), "s": torch.rand(300)}
    blob = pack_quantized_tensors(tensors, {"scheme": "x"}, name, stride)
    restored, meta = unpack_artifact_container(blob)
    assert all(torch.equal(restored[key], tensors[key]) for key in tensors) and meta["quant"] == {"scheme": "x"}
    plain = bytes(range(256)) * 40  # not a container: bounded by max_bytes alone
    assert decompress_model_bytes(compress_model_bytes(plain, name, stride)) == plain
    with pytest.raises(ArtifactError, match="more than 1,000 bytes"):
        decompress_model_bytes(compress_model_bytes(plain, name, stride), max_bytes=1000)


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_truncated_streams_are_still_refused(name):
    blob = compress_model_bytes(SMALL_CONTAINER + bytes(range(256)) * 64, name)
    with pytest.raises(ArtifactError):
        decompress_model_bytes(blob[:-6])


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_every_stream_compressor_has_a_bounded_decompression(name):
    output, finished = _bounded_stream(name, stream_compress(name, b"", 16 * MIB), 1000)
    assert 1000 < len(output) <= REFUSAL_PEAK_BYTES and not finished  # stopped past the limit, well short of the end
    with pytest.raises(ArtifactError, match=f"could not decompress the {name} stream"):
        _bounded_stream(name, b"\xff" * 64, 1000)  # its own library's error, as damage
    with pytest.raises(ArtifactError, match="not a stream compressor"):
        _bounded_stream("pergroup", b"", 1000)
