"""The model bytes of an artifact: a tensor container (quantised tensors plus their meta) -> optional
byte shuffle -> compressor, and back; and the artifact file on disk.

Bytes only: what the tensors mean (quantization schemes, dequantization) is :mod:`pgolf.quant.packing`'s.
The container meta holds ``{"quant": <quantisation meta>, "extra": <caller's meta>}``; the compressor and
shuffle stride live in the compression frame, so tooling loads any artifact without configuration, while
the pipeline reads back only the pair it is configured to write (so that only its decoder ships).
"""

import os
from pathlib import Path

import torch

from pgolf.artifact.compress import (compress_model_bytes, decompress_configured_model_bytes, decompress_model_bytes,
                                     describe_compressed_blob)
from pgolf.artifact.container import pack_tensor_container, unpack_tensor_container
from pgolf.errors import ArtifactError
from pgolf.fsutil import write_bytes_atomic


def pack_quantized_tensors(tensors: dict[str, torch.Tensor], quant_meta: dict, compressor: str,
                           shuffle_stride: int = 0, extra_meta: dict | None = None) -> bytes:
    """Container + compression of already quantised tensors (``quantize_for_artifact`` output)."""
    return compress_model_bytes(artifact_container(tensors, quant_meta, extra_meta), compressor, shuffle_stride)


def artifact_container(tensors: dict[str, torch.Tensor], quant_meta: dict, extra_meta: dict | None) -> bytes:
    """The uncompressed container of a model artifact: the tensors, with meta ``{"quant", "extra"}``."""
    return pack_tensor_container(tensors, {"quant": quant_meta, "extra": extra_meta or {}})


def unpack_artifact_container(blob: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """Decompress and parse a model blob by what its frame records (tooling reads any artifact): (stored
    tensors, meta with ``quant``, ``extra``, ``compressor``, ``shuffle_stride``). Anything that is not a pgolf
    blob (a pickle, a torch.save zip, a damaged file) raises ArtifactError before any of its content is
    interpreted."""
    return _artifact_tensors_and_meta(decompress_model_bytes(blob), blob)


def unpack_configured_artifact_container(blob: bytes, compressor: str,
                                         shuffle_stride: int) -> tuple[dict[str, torch.Tensor], dict]:
    """:func:`unpack_artifact_container` of a blob that must be what ``compressor`` and ``shuffle_stride``
    write (the pipeline's round trip; see :func:`pgolf.artifact.compress.decompress_configured_model_bytes`)."""
    return _artifact_tensors_and_meta(decompress_configured_model_bytes(blob, compressor, shuffle_stride), blob)


def _artifact_tensors_and_meta(container: bytes, blob: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, container_meta = unpack_tensor_container(container)
    if not isinstance(container_meta.get("quant"), dict):
        raise ArtifactError("model artifact meta lacks its 'quant' section; it was not written by pack_model_artifact.")
    compressor, stride = describe_compressed_blob(blob)  # what auto chose, or the configured pair
    meta = {"extra": container_meta.get("extra", {}), "quant": container_meta["quant"],
            "compressor": compressor, "shuffle_stride": stride}
    return tensors, meta


def save_artifact(path: str | os.PathLike, blob: bytes) -> Path:
    """Write the model blob atomically; an existing file is never replaced."""
    path = Path(path)
    if path.exists():
        raise ArtifactError(f"{path} already exists; refusing to overwrite an artifact. Move it away or pick another path.")
    return write_bytes_atomic(path, blob, overwrite=False)


def load_artifact_file(path: str | os.PathLike) -> bytes:
    """Read a model blob from disk, with a clear error when it is missing, a folder or empty."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"artifact file {path} does not exist; check the path (runs write it under runs/<run_id>/artifact/).")
    if not path.is_file():
        raise ArtifactError(f"artifact path {path} is not a file; pass the model blob file itself.")
    blob = path.read_bytes()
    if not blob:
        raise ArtifactError(f"artifact file {path} is empty; the write was interrupted. Re-create the artifact.")
    return blob
