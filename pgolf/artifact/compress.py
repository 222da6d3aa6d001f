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

Every choice of compressor is an ``if`` chain over its name (no table of functions), and the pipeline reads
its artifact back with :func:`decompress_configured_model_bytes` (the configured compressor and stride,
checked against the frame) rather than by what the frame records: ``pgolf export`` folds the chains over
the configured name, so train_gpt.py ships only the configured compressor's code on both sides (``auto``,
and ``pergroup``'s role streams, legitimately need them all). Tooling reads any blob with
:func:`decompress_model_bytes`.

``pergroup`` (SPEC 5.11) is a model compressor rather than a stream compressor: it takes a tensor
container apart by role (:mod:`pgolf.artifact.pergroup`), compresses the residual container with
brotli-11 (after the frame's byte shuffle) and each role stream with the best stream compressor
(every stream a frame of its own), and puts them in a ``PGRP`` frame. Decompression rebuilds the
original container bytes, so every loader works unchanged.

``pergroup_lrzip`` is TOP's own choice (SPEC 5.11): the same layout, but every role stream goes through
the external ``lrzip -z -L 9`` program (ZPAQ context mixing; Debian/Ubuntu package ``lrzip``), stored as
lrzip wrote it; the frame's compressor id says so. Compressing or decompressing it without the program is
an error that names the package; ``auto`` tries it only where the program is installed. lrzip runs on
temporary files with ``LRZIP=NOCONFIG`` (no ``lrzip.conf`` changes its settings).
"""

import importlib
import lzma
import os
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from pgolf.artifact.container import (CONTAINER_PREFIX_BYTES, TENSOR_CONTAINER_MAGIC, container_header_end,
                                      declared_container_bytes)
from pgolf.artifact.pergroup import (join_container_streams, pack_pergroup_streams, pergroup_applicable,
                                     pergroup_stream_sizes, split_container_by_role, unpack_pergroup_streams)
from pgolf.errors import ArtifactError, ConfigError, PgolfError
from pgolf.log import ProgressBar

BYTE_SHUFFLE_MAGIC = b"BSHF"
COMPRESSION_FRAME_MAGIC = b"PGZ"
COMPRESSION_FRAME_HEADER_BYTES = len(COMPRESSION_FRAME_MAGIC) + 2
AUTO_COMPRESSOR = "auto"
AUTO_SHUFFLE_STRIDES = (0, 2)
PERGROUP_COMPRESSOR = "pergroup"
# pergroup with every role stream through the external lrzip program (ZPAQ), as TOP (SPEC 5.11).
PERGROUP_LRZIP_COMPRESSOR = "pergroup_lrzip"
LRZIP_PROGRAM = "lrzip"
LRZIP_PACKAGE = "lrzip"  # the Debian/Ubuntu package that installs the program
LRZIP_COMPRESS_ARGS = ("-z", "-L", "9")  # ZPAQ back end, level 9: TOP's settings
LRZIP_MAGIC = b"LRZI"  # an lrzip file: magic, major and minor version bytes, uint64 LE decompressed size
LRZIP_HEADER_BYTES = len(LRZIP_MAGIC) + 2 + 8
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


# The stream compressors, in the order auto tries them. Their code is reached through the if chains of
# _compress_stream and _bounded_stream over the name, never through a table (see the module docstring).
COMPRESSORS: tuple[str, ...] = ("zlib", "lzma", "brotli", "zstd")
# The id byte written into every frame. Never renumber: old artifacts must stay readable.
COMPRESSOR_IDS: dict[str, int] = {"zlib": 1, "lzma": 2, "brotli": 3, "zstd": 4, "pergroup": 5, "pergroup_lrzip": 6}
_COMPRESSOR_NAMES_BY_ID: dict[int, str] = {code: name for name, code in COMPRESSOR_IDS.items()}


# Compressors outside the standard library, and the module each needs.
_OPTIONAL_COMPRESSOR_MODULES: dict[str, str] = {"brotli": "brotli", "zstd": "zstandard"}


def _unknown_compressor(name: str) -> ConfigError:
    return ConfigError(
        f"unknown compressor {name!r}; valid names are {', '.join(COMPRESSORS)}, {PERGROUP_COMPRESSOR!r} (role "
        f"groups, SPEC 5.11), {PERGROUP_LRZIP_COMPRESSOR!r} (the same with lrzip) or {AUTO_COMPRESSOR!r} (try all "
        "and keep the smallest)."
    )


def _compress_stream(data: bytes, name: str) -> bytes:
    """``data`` through the stream compressor ``name`` at its strongest setting (module docstring)."""
    if name == "zlib":
        return zlib.compress(data, 9)
    if name == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=9 | lzma.PRESET_EXTREME)
    if name == "brotli":
        return _brotli_module_or_error().compress(data, quality=11, lgwin=24)
    if name == "zstd":
        return _zstandard_module_or_error().ZstdCompressor(level=22, write_checksum=True).compress(data)
    raise _unknown_compressor(name)


def available_compressor_names() -> list[str]:
    """Stream compressors whose libraries are importable here, in :data:`COMPRESSORS` order."""
    return [name for name in COMPRESSORS if _compressor_library_importable(name)]


def available_model_compressor_names() -> list[str]:
    """What ``COMPRESSOR`` can name here besides ``auto``: the stream compressors, plus ``pergroup``
    (which needs brotli for its residual stream) and ``pergroup_lrzip`` (brotli and the lrzip program)."""
    names = available_compressor_names()
    if "brotli" not in names:
        return names
    return names + [PERGROUP_COMPRESSOR] + ([PERGROUP_LRZIP_COMPRESSOR] if lrzip_available() else [])


def require_model_compressor(name: str) -> None:
    """Refuse, before any training, a COMPRESSOR this machine cannot run (a library or the lrzip program
    missing), so a run does not discover it only when it packs its artifact. Only ``name``'s own needs
    are checked (an ``if`` chain the export folds): ``auto`` chooses among what is installed."""
    if name == AUTO_COMPRESSOR:
        return
    if name == PERGROUP_LRZIP_COMPRESSOR:
        _lrzip_program_or_error(f"COMPRESSOR={name}")
    if name == "zstd":
        _zstandard_module_or_error()
    elif name == "brotli" or name == PERGROUP_COMPRESSOR or name == PERGROUP_LRZIP_COMPRESSOR:
        # (pergroup's residual stream is brotli)
        _brotli_module_or_error()
    elif name != "zlib" and name != "lzma":
        raise _unknown_compressor(name)


def lrzip_available() -> bool:
    """Whether the external ``lrzip`` program is on ``PATH``."""
    return shutil.which(LRZIP_PROGRAM) is not None


def _lrzip_program_or_error(why: str) -> str:
    program = shutil.which(LRZIP_PROGRAM)
    if program is None:
        raise PgolfError(f"{why} needs the external {LRZIP_PROGRAM!r} program (ZPAQ), which is not on PATH: install "
                         f"the {LRZIP_PACKAGE!r} package (Debian/Ubuntu: apt-get install {LRZIP_PACKAGE}). Without it, "
                         f"COMPRESSOR={PERGROUP_COMPRESSOR} does the same layout with pgolf's own compressors.")
    return program


def run_lrzip(data: bytes, *, decompress: bool) -> bytes:
    """``lrzip -z -L 9`` (or ``lrzip -d``) over ``data``, through temporary files; no lrzip.conf is read."""
    why = "decompressing this artifact (its role streams are lrzip)" if decompress else (
        f"COMPRESSOR={PERGROUP_LRZIP_COMPRESSOR}")
    program = _lrzip_program_or_error(why)
    with tempfile.TemporaryDirectory(prefix="pgolf-lrzip-") as folder:
        source, target = Path(folder) / "input", Path(folder) / "output"
        source.write_bytes(data)
        mode = ["-d"] if decompress else list(LRZIP_COMPRESS_ARGS)
        result = subprocess.run([program, *mode, "-q", "-f", "-o", str(target), str(source)], capture_output=True,
                                env={**os.environ, "LRZIP": "NOCONFIG"}, stdin=subprocess.DEVNULL)
        if result.returncode != 0 or not target.is_file():
            message = result.stderr.decode(errors="replace").strip()[-300:]
            if decompress:
                raise ArtifactError(f"lrzip could not decompress a role stream (exit {result.returncode}: {message}); "
                                    "the artifact is truncated or damaged. Re-create or re-copy it.")
            raise PgolfError(f"lrzip failed (exit {result.returncode}): {message}")
        return target.read_bytes()


def lrzip_declared_size(blob: bytes) -> int | None:
    """The decompressed size an lrzip file declares (``LRZI``, 2 version bytes, then uint64 little-endian),
    or None when ``blob`` does not start like one."""
    if len(blob) < LRZIP_HEADER_BYTES or blob[:len(LRZIP_MAGIC)] != LRZIP_MAGIC:
        return None
    return int.from_bytes(blob[len(LRZIP_MAGIC) + 2:LRZIP_HEADER_BYTES], "little")


def _lrzip_decompress_exactly(blob: bytes, size: int) -> bytes:
    """A role stream back through lrzip, refused before lrzip runs unless it declares the manifest's size."""
    declared = lrzip_declared_size(blob)
    if declared != size:
        raise ArtifactError(f"a pergroup_lrzip role stream declares {declared} bytes where the manifest says {size:,}; "
                            "the artifact is damaged. Re-create or re-copy it.")
    data = run_lrzip(blob, decompress=True)
    if len(data) != size:
        raise ArtifactError(f"a pergroup_lrzip role stream decompressed to {len(data):,} bytes, not {size:,}; the "
                            "artifact is damaged.")
    return data


def _compressor_library_importable(name: str) -> bool:
    if name not in _OPTIONAL_COMPRESSOR_MODULES:
        return True
    try:
        importlib.import_module(_OPTIONAL_COMPRESSOR_MODULES[name])
    except ImportError:
        return False
    return True


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
    if compressor == PERGROUP_COMPRESSOR or compressor == PERGROUP_LRZIP_COMPRESSOR:
        return _pergroup_frame(data, shuffle_stride, compressor == PERGROUP_LRZIP_COMPRESSOR)
    return _stream_frame(data, compressor, shuffle_stride)


def _stream_frame(data: bytes, name: str, shuffle_stride: int) -> bytes:
    """One stream compressor's frame: the header, then ``data`` (byte-shuffled when asked) compressed."""
    _check_shuffle_stride(shuffle_stride)
    shuffled = byte_shuffle(data, shuffle_stride) if shuffle_stride else bytes(data)
    compressed = _compress_stream(shuffled, name)  # first: an unknown name is a ConfigError, not a KeyError
    return _compression_frame_header(name, shuffle_stride) + compressed


def _compression_frame_header(compressor: str, shuffle_stride: int) -> bytes:
    return COMPRESSION_FRAME_MAGIC + bytes([COMPRESSOR_IDS[compressor], shuffle_stride])


def _pergroup_frame(data: bytes, shuffle_stride: int, lrzip: bool) -> bytes:
    _check_shuffle_stride(shuffle_stride)
    name = PERGROUP_LRZIP_COMPRESSOR if lrzip else PERGROUP_COMPRESSOR
    if lrzip:
        _lrzip_program_or_error(f"COMPRESSOR={name}")  # before any work
    return _compression_frame_header(name, shuffle_stride) + _pergroup_compress(data, shuffle_stride, lrzip)


def _pergroup_role_streams(data: bytes) -> list[bytes]:
    if bytes(data[:len(TENSOR_CONTAINER_MAGIC)]) != TENSOR_CONTAINER_MAGIC:
        raise ConfigError("COMPRESSOR=pergroup compresses pgolf tensor containers (model artifacts) only; use "
                          f"{', '.join(COMPRESSORS)} or {AUTO_COMPRESSOR} for other data.")
    return split_container_by_role(data)


def _pergroup_compress(data: bytes, shuffle_stride: int, lrzip: bool, streams: list[bytes] | None = None) -> bytes:
    """PGRP frame: the residual container brotli-11 (shuffled), each role stream with the best compressor
    (``lrzip``: raw ``lrzip -z -L 9`` output). ``streams``: the split, when the caller already has it."""
    streams = _pergroup_role_streams(data) if streams is None else streams
    # brotli-11 and lrzip take minutes on a 16 MB model: a bar per role stream shows that it moves
    bar = ProgressBar("compress role streams", len(streams))
    frames = [_stream_frame(streams[0], "brotli", shuffle_stride)]
    for index, stream in enumerate(streams[1:], start=1):
        bar.update(index)
        frames.append(run_lrzip(stream, decompress=False) if lrzip else
                      choose_smallest_compression(stream, strides=(0,))[0])
    bar.close()
    return pack_pergroup_streams(frames)


def auto_compress(data: bytes, shuffle_stride: int = 0) -> bytes:
    """``COMPRESSOR=auto``: the smallest of every available (compressor, stride) pair with strides 0, 2
    and ``shuffle_stride``, and of ``pergroup`` (stride 2) where it applies, and of ``pergroup_lrzip``
    (stride 2) where it applies and the lrzip program is installed. Ties keep the earlier one."""
    strides = tuple(sorted(set(AUTO_SHUFFLE_STRIDES) | {shuffle_stride}))
    best = choose_smallest_compression(data, strides=strides)[0]
    grouped = [name for name in (PERGROUP_COMPRESSOR, PERGROUP_LRZIP_COMPRESSOR) if name in available_model_compressor_names()]
    if grouped and pergroup_applicable(data):
        streams = _pergroup_role_streams(data)  # the row chains once, for both
        for name in grouped:
            candidate = _compression_frame_header(name, AUTO_PERGROUP_STRIDE) + _pergroup_compress(
                data, AUTO_PERGROUP_STRIDE, name == PERGROUP_LRZIP_COMPRESSOR, streams)
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


# The most bytes a model blob may decompress to when nothing tighter is known (a byte-shuffled stream
# spreads its container header over the planes): far above any model near the 16 MB cap (their
# containers are tens of MB), far below what a decompression bomb asks for.
MAX_DECOMPRESSED_MODEL_BYTES = 1 << 30
# zstd (and brotli before 1.2, which has no output limit) get their input in slices of this many bytes,
# so one call overshoots a limit by at most what such a slice expands to (zstd: 8 MiB).
BOUNDED_INPUT_SLICE_BYTES = 256


def _sliced_decompress(feed: Callable[[bytes], bytes], finished: Callable[[], bool], payload: bytes,
                       limit: int) -> tuple[bytes, bool]:
    """Feed ``payload`` slice by slice until the stream ends or the output passes ``limit``."""
    pieces, produced = [], 0
    for start in range(0, len(payload), BOUNDED_INPUT_SLICE_BYTES):
        if finished():
            raise ArtifactError("the compressed stream is followed by stray bytes.")
        pieces.append(feed(payload[start:start + BOUNDED_INPUT_SLICE_BYTES]))
        produced += len(pieces[-1])
        if produced > limit:
            break
    return b"".join(pieces), finished()


def _zlib_decompress_bounded(payload: bytes, limit: int) -> tuple[bytes, bool]:
    decompressor = zlib.decompressobj()
    output = decompressor.decompress(payload, limit + 1)
    if decompressor.eof and decompressor.unused_data:
        raise ArtifactError("zlib stream is followed by stray bytes.")
    return output, decompressor.eof


def _lzma_decompress_bounded(payload: bytes, limit: int) -> tuple[bytes, bool]:
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    output = decompressor.decompress(payload, max_length=limit + 1)
    if decompressor.eof and decompressor.unused_data:
        raise ArtifactError("xz stream is followed by stray bytes.")
    return output, decompressor.eof


def _brotli_decompress_bounded(payload: bytes, limit: int) -> tuple[bytes, bool]:
    decompressor = _brotli_module_or_error().Decompressor()
    try:
        output = decompressor.process(payload, output_buffer_limit=limit + 1)
    except TypeError:  # brotli < 1.2: no output limit, so the input goes in slices
        return _sliced_decompress(decompressor.process, decompressor.is_finished, payload, limit)
    return output, decompressor.is_finished()


def _zstd_decompress_bounded(payload: bytes, limit: int) -> tuple[bytes, bool]:
    decompressor = _zstandard_module_or_error().ZstdDecompressor().decompressobj()
    output, finished = _sliced_decompress(decompressor.decompress, lambda: decompressor.eof, payload, limit)
    if finished and decompressor.unused_data:
        raise ArtifactError("zstd stream is followed by stray bytes.")
    return output, finished


def _bounded_stream(name: str, payload: bytes, limit: int) -> tuple[bytes, bool]:
    """The stream compressor ``name``'s decompression of ``payload``, stopped once the output passes
    ``limit``: (at most about limit + 1 bytes, whether the stream ended there)."""
    try:
        if name == "zlib":
            return _zlib_decompress_bounded(payload, limit)
        if name == "lzma":
            return _lzma_decompress_bounded(payload, limit)
        if name == "brotli":
            return _brotli_decompress_bounded(payload, limit)
        if name == "zstd":
            return _zstd_decompress_bounded(payload, limit)
        raise ArtifactError(f"model blob compressor {name!r} is not a stream compressor; the file is corrupt.")
    except PgolfError:
        raise
    except Exception as error:  # each library has its own error type; all mean "damaged stream"
        raise ArtifactError(
            f"could not decompress the {name} stream of the model blob ({type(error).__name__}: {error}); "
            "the file is truncated or damaged. Re-create or re-copy it."
        ) from None


def _declared_stream_bytes(name: str, payload: bytes, limit: int) -> int:
    """What an unshuffled stream holding a tensor container declares it decompresses to (read from the
    first bytes only), refused when over ``limit``; ``limit`` itself for a stream of other bytes."""
    head, _ = _bounded_stream(name, payload, CONTAINER_PREFIX_BYTES)
    if len(head) < CONTAINER_PREFIX_BYTES or head[:len(TENSOR_CONTAINER_MAGIC)] != TENSOR_CONTAINER_MAGIC:
        return limit
    header_end = container_header_end(head[:CONTAINER_PREFIX_BYTES])
    if header_end > limit:
        raise ArtifactError(f"the model blob's container declares a {header_end:,}-byte header, more than the "
                            f"{limit:,} bytes a model blob may decompress to; the file is damaged or a decompression "
                            "bomb. Refused before decompressing it.")
    head, _ = _bounded_stream(name, payload, header_end)
    declared = declared_container_bytes(head[:header_end])
    if declared > limit:
        raise ArtifactError(f"the model blob's container declares {declared:,} bytes, more than the {limit:,} a "
                            "model blob may decompress to; the file is damaged or a decompression bomb. Refused "
                            "before decompressing its tensors.")
    return declared


def decompress_model_bytes(blob: bytes, max_bytes: int = MAX_DECOMPRESSED_MODEL_BYTES) -> bytes:
    """Invert :func:`compress_model_bytes` by what the blob's frame records (tooling reads any artifact;
    the pipeline uses :func:`decompress_configured_model_bytes`); damaged or truncated input raises
    ArtifactError.

    Decompression never produces much more than it may: a stream holding a tensor container stops at
    the size its header declares, any other stream at ``max_bytes``; more is refused as damage (or a
    decompression bomb) without ever holding the rest in memory."""
    name, stride = describe_compressed_blob(blob)
    return _decompress_frame(blob, name, stride, max_bytes)


def decompress_configured_model_bytes(blob: bytes, compressor: str, shuffle_stride: int,
                                      max_bytes: int = MAX_DECOMPRESSED_MODEL_BYTES) -> bytes:
    """:func:`decompress_model_bytes` of a blob that must be what ``compressor`` and ``shuffle_stride`` write:
    the pipeline reading back its own artifact. A blob made otherwise is an ArtifactError naming both;
    ``auto`` accepts every blob (it may have chosen any). Only the configured compressor's code runs here,
    so it is all that train_gpt.py ships (module docstring)."""
    if compressor == AUTO_COMPRESSOR:
        return decompress_model_bytes(blob, max_bytes)
    found, found_stride = describe_compressed_blob(blob)
    if (found, found_stride) != (compressor, shuffle_stride):
        raise ArtifactError(
            f"the model blob is {found} with shuffle stride {found_stride}, but this configuration writes "
            f"{compressor} with stride {shuffle_stride} "
            f"(COMPRESSOR={compressor} BYTE_SHUFFLE_STRIDE={shuffle_stride}); a run reads back only what it writes. "
            "Score another artifact with `pgolf eval` (it reads any), or set COMPRESSOR and BYTE_SHUFFLE_STRIDE to "
            "what it holds.")
    return _decompress_frame(blob, compressor, shuffle_stride, max_bytes)


def _decompress_frame(blob: bytes, name: str, stride: int, max_bytes: int) -> bytes:
    payload = bytes(blob[COMPRESSION_FRAME_HEADER_BYTES:])
    if name == PERGROUP_COMPRESSOR or name == PERGROUP_LRZIP_COMPRESSOR:
        return _pergroup_decompress(payload, stride, name == PERGROUP_LRZIP_COMPRESSOR, max_bytes)
    return _decompress_stream_frame(payload, name, stride, max_bytes)


def _decompress_stream_frame(payload: bytes, name: str, stride: int, max_bytes: int) -> bytes:
    """The data of a stream compressor's frame (its ``payload``, after the header), bounded as
    :func:`decompress_model_bytes` says."""
    limit = max_bytes + len(BYTE_SHUFFLE_MAGIC) + 1 if stride else _declared_stream_bytes(name, payload, max_bytes)
    data, finished = _bounded_stream(name, payload, limit)
    if len(data) > limit:
        source = "pgolf's limit for a model blob" if stride else "what its container header declares"
        allowed = max_bytes if stride else limit  # a shuffled stream also holds its 5-byte shuffle prefix
        raise ArtifactError(f"the {name} stream of the model blob decompresses to more than {allowed:,} bytes "
                            f"({source}); the file is damaged or a decompression bomb. Refused before decompressing "
                            "the rest.")
    if not finished:
        raise ArtifactError(f"the {name} stream of the model blob is truncated (it ends before its end marker); "
                            "re-create or re-copy the file.")
    if not stride:
        return data
    # The frame and the shuffled data both record the stride; disagreement means a damaged frame.
    if data[len(BYTE_SHUFFLE_MAGIC):len(BYTE_SHUFFLE_MAGIC) + 1] != bytes([stride]):
        raise ArtifactError(f"model blob frame says shuffle stride {stride} but its data disagrees; the file is damaged.")
    return byte_unshuffle(data)


def _pergroup_frame_error(which: str, frame: bytes) -> ArtifactError:
    name, stride = describe_compressed_blob(frame)
    return ArtifactError(f"pergroup {which} has a damaged frame ({name}, stride {stride}); the artifact is corrupt. "
                         "Re-create or re-copy it.")


def _pergroup_decompress(payload: bytes, shuffle_stride: int, lrzip: bool, max_bytes: int) -> bytes:
    frames = unpack_pergroup_streams(payload)
    # The residual is always brotli at the frame's stride (_pergroup_compress): read as that, so that the
    # export of a pergroup_lrzip configuration needs no other stream decompressor.
    if describe_compressed_blob(frames[0]) != ("brotli", shuffle_stride):
        raise _pergroup_frame_error("stream 0 (the residual)", frames[0])
    residual = _decompress_stream_frame(frames[0][COMPRESSION_FRAME_HEADER_BYTES:], "brotli", shuffle_stride, max_bytes)
    sizes = pergroup_stream_sizes(residual, len(frames))  # what each role stream may decompress to
    if len(residual) + sum(sizes) > max_bytes:
        raise ArtifactError(f"the pergroup model blob declares {len(residual) + sum(sizes):,} bytes, more than the "
                            f"{max_bytes:,} a model blob may decompress to; the artifact is damaged or a decompression "
                            "bomb. Refused before decompressing its role streams.")
    if lrzip:
        return join_container_streams([residual] + [_lrzip_decompress_exactly(frame, size)
                                                    for frame, size in zip(frames[1:], sizes)])
    return join_container_streams([residual] + [_pergroup_role_stream(frame, size)
                                                for frame, size in zip(frames[1:], sizes)])


def _pergroup_role_stream(frame: bytes, size: int) -> bytes:
    """A pergroup role stream: a frame of whichever stream compressor was smallest for it."""
    name, stride = describe_compressed_blob(frame)
    if name == PERGROUP_COMPRESSOR or name == PERGROUP_LRZIP_COMPRESSOR:
        raise _pergroup_frame_error("role stream", frame)
    return _decompress_stream_frame(frame[COMPRESSION_FRAME_HEADER_BYTES:], name, stride, size)


def choose_smallest_compression(
    data: bytes, compressors: list[str] | None = None, strides: tuple[int, ...] = AUTO_SHUFFLE_STRIDES
) -> tuple[bytes, str, int]:
    """Try every (stream compressor, stride) pair and return (smallest blob, its compressor, its stride).

    ``compressors`` defaults to all available stream compressors (``pergroup`` is tried by
    :func:`auto_compress`, not here). On a 16 MB model this takes minutes (brotli-11 and lzma-extreme
    are slow), which is fine once per run. Ties go to the earlier pair, so the choice is deterministic.
    """
    names = available_compressor_names() if compressors is None else list(compressors)
    if not names or not set(names) <= set(COMPRESSORS):
        raise ConfigError(f"choose_smallest_compression tries stream compressors, got {names}: pass at least one of "
                          + ", ".join(COMPRESSORS))
    best: tuple[bytes, str, int] | None = None
    for name in names:
        for stride in strides:
            blob = _stream_frame(data, name, stride)
            if best is None or len(blob) < len(best[0]):
                best = (blob, name, stride)
    return best
