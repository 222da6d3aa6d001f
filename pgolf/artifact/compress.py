"""Compression of model bytes: an optional byte shuffle, then zlib, lzma, brotli or zstd.

Byte shuffle (SPEC 4.11): ``b"BSHF"`` + one stride byte + the input de-interleaved into ``stride``
planes (all bytes at offsets = 0 mod stride, then 1 mod stride, ...). Plane ``p`` holds
``n // stride + (p < n % stride)`` bytes. With stride 2 the low and high bytes of 2-byte values
(fp16 scales, bf16) end up in separate runs, which compressors model much better.

Compressed blobs are self-describing, so loading needs no config. Frame layout::

    b"PGZ" | compressor id (1 byte) | shuffle stride (1 byte, 0 = no shuffle) | compressed stream

Compressor settings (the strongest each offers, since artifact bytes are the scarce resource):
zlib level 9; lzma in the xz container with preset 9 | PRESET_EXTREME and a CRC32 check (the xz
container costs ~60 bytes over raw lzma but detects damage on its own and needs no filter settings to
decode); brotli quality 11 with a 16 MiB window (lgwin 24); zstd level 22 with a content checksum.
brotli and zstandard are imported only when used, because GPU images may lack them.

``pergroup`` (SPEC 5.11) is a model compressor rather than a stream compressor: it takes a tensor
container apart by role (:mod:`pgolf.artifact.pergroup`), compresses the residual container with
brotli-11 (after the frame's byte shuffle) and each role stream with the best stream compressor
(every stream a frame of its own), and puts them in a ``PGRP`` frame. Decompression rebuilds the
original container bytes, so every loader works unchanged. TOP compressed its role streams with the
external ``lrzip -z -L 9`` (ZPAQ) binary; pgolf uses only its own compressors, so it has no ZPAQ.
"""

import importlib
import lzma
import zlib
from typing import Callable

import numpy as np

from pgolf.artifact.container import TENSOR_CONTAINER_MAGIC
from pgolf.artifact.pergroup import (join_container_streams, pack_pergroup_streams, pergroup_applicable,
                                     split_container_by_role, unpack_pergroup_streams)
from pgolf.errors import ArtifactError, ConfigError, PgolfError

BYTE_SHUFFLE_MAGIC = b"BSHF"
COMPRESSION_FRAME_MAGIC = b"PGZ"
COMPRESSION_FRAME_HEADER_BYTES = len(COMPRESSION_FRAME_MAGIC) + 2
AUTO_COMPRESSOR = "auto"
AUTO_SHUFFLE_STRIDES = (0, 2)
PERGROUP_COMPRESSOR = "pergroup"
# auto tries pergroup once (it is the slowest), with its residual stream (fp16 scales) shuffled by 2.
AUTO_PERGROUP_STRIDE = 2


def byte_shuffle(data: bytes, stride: int) -> bytes:
    """De-interleave ``data`` into ``stride`` byte planes, prefixed by ``b"BSHF"`` and the stride."""
    if not isinstance(stride, int) or not 1 <= stride <= 255:
        raise ConfigError(f"shuffle stride must be an int in 1..255, got {stride!r}; use 2 for 16-bit weights.")
    as_array = np.frombuffer(data, dtype=np.uint8)
    planes = np.concatenate([as_array[plane::stride] for plane in range(stride)])
    return BYTE_SHUFFLE_MAGIC + bytes([stride]) + planes.tobytes()


def byte_unshuffle(data: bytes) -> bytes:
    """Invert :func:`byte_shuffle` (the stride is read from the data)."""
    prefix_length = len(BYTE_SHUFFLE_MAGIC) + 1
    if len(data) < prefix_length or data[:len(BYTE_SHUFFLE_MAGIC)] != BYTE_SHUFFLE_MAGIC:
        raise ArtifactError(f"byte-shuffled data must start with {BYTE_SHUFFLE_MAGIC!r} and a stride byte; the data is corrupt.")
    stride = data[len(BYTE_SHUFFLE_MAGIC)]
    if stride == 0:
        raise ArtifactError("byte-shuffled data declares stride 0, which is invalid; the data is corrupt.")
    planes = np.frombuffer(data, dtype=np.uint8, offset=prefix_length)
    total = planes.size
    output = np.empty(total, dtype=np.uint8)
    start = 0
    for plane in range(stride):
        plane_length = total // stride + (plane < total % stride)
        output[plane::stride] = planes[start:start + plane_length]
        start += plane_length
    return output.tobytes()


def _brotli_module_or_error():
    try:
        import brotli
    except ImportError:
        raise PgolfError("compressor 'brotli' needs the brotli package: pip install brotli") from None
    return brotli


def _zstandard_module_or_error():
    try:
        import zstandard
    except ImportError:
        raise PgolfError("compressor 'zstd' needs the zstandard package: pip install zstandard") from None
    return zstandard


def _zlib_decompress_whole(blob: bytes) -> bytes:
    # A decompress object tells a truncated stream (not eof) and trailing junk (unused_data) apart.
    decompressor = zlib.decompressobj()
    output = decompressor.decompress(blob)
    if not decompressor.eof or decompressor.unused_data:
        raise ArtifactError("zlib stream is truncated or followed by stray bytes.")
    return output


def _lzma_compress_strongest(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=9 | lzma.PRESET_EXTREME)


def _brotli_compress_strongest(data: bytes) -> bytes:
    return _brotli_module_or_error().compress(data, quality=11, lgwin=24)


def _zstd_compress_strongest(data: bytes) -> bytes:
    return _zstandard_module_or_error().ZstdCompressor(level=22, write_checksum=True).compress(data)


def _zstd_decompress_whole(blob: bytes) -> bytes:
    return _zstandard_module_or_error().ZstdDecompressor().decompress(blob)


COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "zlib": (lambda data: zlib.compress(data, 9), _zlib_decompress_whole),
    "lzma": (_lzma_compress_strongest, lambda blob: lzma.decompress(blob, format=lzma.FORMAT_XZ)),
    "brotli": (_brotli_compress_strongest, lambda blob: _brotli_module_or_error().decompress(blob)),
    "zstd": (_zstd_compress_strongest, _zstd_decompress_whole),
}
# The id byte written into every frame. Never renumber: old artifacts must stay readable.
COMPRESSOR_IDS: dict[str, int] = {"zlib": 1, "lzma": 2, "brotli": 3, "zstd": 4, "pergroup": 5}
_COMPRESSOR_NAMES_BY_ID: dict[int, str] = {code: name for name, code in COMPRESSOR_IDS.items()}


# Compressors outside the standard library, and the module each needs.
_OPTIONAL_COMPRESSOR_MODULES: dict[str, str] = {"brotli": "brotli", "zstd": "zstandard"}

def available_compressor_names() -> list[str]:
    """Stream compressors whose libraries are importable here, in :data:`COMPRESSORS` order."""
    return [name for name in COMPRESSORS if _compressor_library_importable(name)]


def available_model_compressor_names() -> list[str]:
    """What ``COMPRESSOR`` can name here besides ``auto``: the stream compressors, plus ``pergroup``
    (which needs brotli for its residual stream)."""
    names = available_compressor_names()
    return names + [PERGROUP_COMPRESSOR] if "brotli" in names else names


def _compressor_library_importable(name: str) -> bool:
    if name not in _OPTIONAL_COMPRESSOR_MODULES:
        return True
    try:
        importlib.import_module(_OPTIONAL_COMPRESSOR_MODULES[name])
    except ImportError:
        return False
    return True


def _compressor_pair(name: str) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    if name not in COMPRESSORS:
        raise ConfigError(
            f"unknown compressor {name!r}; valid names are {', '.join(COMPRESSORS)}, {PERGROUP_COMPRESSOR!r} (role "
            f"groups, SPEC 5.11) or {AUTO_COMPRESSOR!r} (try all and keep the smallest)."
        )
    return COMPRESSORS[name]


def _check_shuffle_stride(shuffle_stride) -> None:
    if not isinstance(shuffle_stride, int) or isinstance(shuffle_stride, bool) or not 0 <= shuffle_stride <= 255:
        raise ConfigError(f"shuffle_stride must be an int in 0..255 (0 = no shuffle), got {shuffle_stride!r}.")


def compress_model_bytes(data: bytes, compressor: str, shuffle_stride: int = 0) -> bytes:
    """Compress ``data`` with the named compressor (after a byte shuffle if ``shuffle_stride`` > 0).

    The result starts with a 5-byte frame header recording both choices, so
    :func:`decompress_model_bytes` needs no settings. ``compressor="auto"`` keeps the smallest result
    of every available compressor with strides 0, 2 and ``shuffle_stride``, and of ``pergroup`` at
    stride 2 when ``data`` is a tensor container with grouped matrices (see :func:`auto_compress`).
    ``compressor="pergroup"`` needs a tensor container; its stride applies to the residual stream.
    """
    if compressor == AUTO_COMPRESSOR:
        return auto_compress(data, shuffle_stride)
    if compressor == PERGROUP_COMPRESSOR:
        _check_shuffle_stride(shuffle_stride)
        return _compression_frame_header(compressor, shuffle_stride) + _pergroup_compress(data, shuffle_stride)
    compress, _ = _compressor_pair(compressor)
    _check_shuffle_stride(shuffle_stride)
    shuffled = byte_shuffle(data, shuffle_stride) if shuffle_stride else bytes(data)
    return _compression_frame_header(compressor, shuffle_stride) + compress(shuffled)


def _compression_frame_header(compressor: str, shuffle_stride: int) -> bytes:
    return COMPRESSION_FRAME_MAGIC + bytes([COMPRESSOR_IDS[compressor], shuffle_stride])


def _pergroup_compress(data: bytes, shuffle_stride: int) -> bytes:
    """PGRP frame: the residual container brotli-11 (shuffled), each role stream with the best compressor."""
    if bytes(data[:len(TENSOR_CONTAINER_MAGIC)]) != TENSOR_CONTAINER_MAGIC:
        raise ConfigError("COMPRESSOR=pergroup compresses pgolf tensor containers (model artifacts) only; use "
                          f"{', '.join(COMPRESSORS)} or {AUTO_COMPRESSOR} for other data.")
    streams = split_container_by_role(data)
    frames = [compress_model_bytes(streams[0], "brotli", shuffle_stride)]
    frames += [choose_smallest_compression(stream, strides=(0,))[0] for stream in streams[1:]]
    return pack_pergroup_streams(frames)


def _pergroup_decompress(payload: bytes, shuffle_stride: int) -> bytes:
    frames = unpack_pergroup_streams(payload)
    for index, frame in enumerate(frames):
        name, stride = describe_compressed_blob(frame)
        if name == PERGROUP_COMPRESSOR or (index == 0 and stride != shuffle_stride):
            raise ArtifactError(f"pergroup stream {index} has a damaged frame ({name}, stride {stride}); the artifact "
                                "is corrupt. Re-create or re-copy it.")
    return join_container_streams([decompress_model_bytes(frame) for frame in frames])


def auto_compress(data: bytes, shuffle_stride: int = 0) -> bytes:
    """``COMPRESSOR=auto``: the smallest of every available (compressor, stride) pair with strides 0, 2
    and ``shuffle_stride``, and of ``pergroup`` (stride 2) where it applies. Ties keep the earlier one."""
    strides = tuple(sorted(set(AUTO_SHUFFLE_STRIDES) | {shuffle_stride}))
    best = choose_smallest_compression(data, strides=strides)[0]
    if PERGROUP_COMPRESSOR in available_model_compressor_names() and pergroup_applicable(data):
        candidate = compress_model_bytes(data, PERGROUP_COMPRESSOR, AUTO_PERGROUP_STRIDE)
        best = candidate if len(candidate) < len(best) else best
    return best


def describe_compressed_blob(blob: bytes) -> tuple[str, int]:
    """Read the frame header of a compressed blob: (compressor name, shuffle stride)."""
    if len(blob) < COMPRESSION_FRAME_HEADER_BYTES or blob[:len(COMPRESSION_FRAME_MAGIC)] != COMPRESSION_FRAME_MAGIC:
        raise ArtifactError(
            f"not a pgolf compressed model blob (expected it to start with {COMPRESSION_FRAME_MAGIC!r}, got "
            f"{bytes(blob[:8])!r}). pgolf does not load torch.save/pickle files (e.g. the baseline's .ptz) because "
            "unpickling can execute code; re-pack the model with pgolf."
        )
    compressor_id, stride = blob[len(COMPRESSION_FRAME_MAGIC)], blob[len(COMPRESSION_FRAME_MAGIC) + 1]
    if compressor_id not in _COMPRESSOR_NAMES_BY_ID:
        raise ArtifactError(
            f"compressed blob names unknown compressor id {compressor_id} (known: {COMPRESSOR_IDS}); the file is "
            "corrupt or from a newer pgolf."
        )
    return _COMPRESSOR_NAMES_BY_ID[compressor_id], stride


def decompress_model_bytes(blob: bytes) -> bytes:
    """Invert :func:`compress_model_bytes`; damaged or truncated input raises ArtifactError."""
    name, stride = describe_compressed_blob(blob)
    if name == PERGROUP_COMPRESSOR:
        return _pergroup_decompress(bytes(blob[COMPRESSION_FRAME_HEADER_BYTES:]), stride)
    _, decompress = COMPRESSORS[name]
    try:
        data = decompress(bytes(blob[COMPRESSION_FRAME_HEADER_BYTES:]))
    except PgolfError:
        raise
    except Exception as error:  # each library has its own error type; all mean "damaged stream"
        raise ArtifactError(
            f"could not decompress the {name} stream of the model blob ({type(error).__name__}: {error}); "
            "the file is truncated or damaged. Re-create or re-copy it."
        ) from None
    if not stride:
        return data
    # The frame and the shuffled data both record the stride; disagreement means a damaged frame.
    if data[len(BYTE_SHUFFLE_MAGIC):len(BYTE_SHUFFLE_MAGIC) + 1] != bytes([stride]):
        raise ArtifactError(f"model blob frame says shuffle stride {stride} but its data disagrees; the file is damaged.")
    return byte_unshuffle(data)


def choose_smallest_compression(
    data: bytes, compressors: list[str] | None = None, strides: tuple[int, ...] = AUTO_SHUFFLE_STRIDES
) -> tuple[bytes, str, int]:
    """Try every (compressor, stride) pair and return (smallest blob, its compressor, its stride).

    ``compressors`` defaults to all available stream compressors (``pergroup`` is tried by
    :func:`auto_compress`, not here). On a 16 MB model this takes minutes (brotli-11 and lzma-extreme
    are slow), which is fine once per run. Ties go to the earlier pair, so the choice is deterministic.
    """
    names = available_compressor_names() if compressors is None else list(compressors)
    if not names:
        raise ConfigError("no compressor to try: pass at least one of " + ", ".join(COMPRESSORS))
    best: tuple[bytes, str, int] | None = None
    for name in names:
        for stride in strides:
            blob = compress_model_bytes(data, name, stride)
            if best is None or len(blob) < len(best[0]):
                best = (blob, name, stride)
    return best

