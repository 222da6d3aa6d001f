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
"""

import importlib
import lzma
import zlib
from typing import Callable

import numpy as np

from pgolf.errors import ArtifactError, ConfigError, PgolfError

BYTE_SHUFFLE_MAGIC = b"BSHF"
COMPRESSION_FRAME_MAGIC = b"PGZ"
COMPRESSION_FRAME_HEADER_BYTES = len(COMPRESSION_FRAME_MAGIC) + 2
AUTO_COMPRESSOR = "auto"
AUTO_SHUFFLE_STRIDES = (0, 2)


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
COMPRESSOR_IDS: dict[str, int] = {"zlib": 1, "lzma": 2, "brotli": 3, "zstd": 4}
_COMPRESSOR_NAMES_BY_ID: dict[int, str] = {code: name for name, code in COMPRESSOR_IDS.items()}


# Compressors outside the standard library, and the module each needs.
_OPTIONAL_COMPRESSOR_MODULES: dict[str, str] = {"brotli": "brotli", "zstd": "zstandard"}


def available_compressor_names() -> list[str]:
    """Compressors whose libraries are importable here, in :data:`COMPRESSORS` order."""
    return [name for name in COMPRESSORS if _compressor_library_importable(name)]


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
            f"unknown compressor {name!r}; valid names are {', '.join(COMPRESSORS)} (or {AUTO_COMPRESSOR!r} "
            "to try all and keep the smallest)."
        )
    return COMPRESSORS[name]


def compress_model_bytes(data: bytes, compressor: str, shuffle_stride: int = 0) -> bytes:
    """Compress ``data`` with the named compressor (after a byte shuffle if ``shuffle_stride`` > 0).

    The result starts with a 5-byte frame header recording both choices, so
    :func:`decompress_model_bytes` needs no settings. ``compressor="auto"`` keeps the smallest result
    of every available compressor with strides 0, 2 and ``shuffle_stride``
    (see :func:`choose_smallest_compression`).
    """
    if compressor == AUTO_COMPRESSOR:
        strides = tuple(sorted(set(AUTO_SHUFFLE_STRIDES) | {shuffle_stride}))
        return choose_smallest_compression(data, strides=strides)[0]
    compress, _ = _compressor_pair(compressor)
    if not isinstance(shuffle_stride, int) or not 0 <= shuffle_stride <= 255:
        raise ConfigError(f"shuffle_stride must be an int in 0..255 (0 = no shuffle), got {shuffle_stride!r}.")
    shuffled = byte_shuffle(data, shuffle_stride) if shuffle_stride else bytes(data)
    frame_header = COMPRESSION_FRAME_MAGIC + bytes([COMPRESSOR_IDS[compressor], shuffle_stride])
    return frame_header + compress(shuffled)


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

    ``compressors`` defaults to all available ones. On a 16 MB model this takes minutes (brotli-11 and
    lzma-extreme are slow), which is fine once per run. Ties go to the earlier pair, so the choice is
    deterministic.
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
