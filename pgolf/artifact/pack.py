"""One call each way between a state dict and the model bytes that ship in the artifact.

``pack_model_artifact``: int8 round-to-nearest quantisation -> pgolf tensor container -> optional byte
shuffle -> compressor. ``unpack_model_artifact`` inverts it without ever unpickling, so loading a
stranger's artifact cannot run code. The container meta holds ``{"quant": <quantisation meta>,
"extra": <caller's meta>}``; the compressor and shuffle stride live in the compression frame.
"""

import os
from pathlib import Path

import torch

from pgolf.artifact.compress import compress_model_bytes, decompress_model_bytes, describe_compressed_blob
from pgolf.artifact.container import pack_tensor_container, unpack_tensor_container
from pgolf.errors import ArtifactError
from pgolf.fsutil import write_bytes_atomic
from pgolf.quant.rtn import dequantize_state_dict_int8, quantize_state_dict_int8


def pack_model_artifact(
    state_dict: dict[str, torch.Tensor],
    *,
    keep_float_patterns: tuple[str, ...],
    compressor: str = "zlib",
    shuffle_stride: int = 0,
    extra_meta: dict | None = None,
) -> bytes:
    """Quantise ``state_dict`` to int8, pack it and compress it; return the model blob.

    ``compressor="auto"`` keeps the smallest of every available compressor with shuffle strides 0 and 2
    (plus ``shuffle_stride``); the choice is recorded in the blob (read it back with
    :func:`pgolf.artifact.compress.describe_compressed_blob`). ``extra_meta`` (JSON-able) travels along
    and is returned by :func:`unpack_model_artifact`.
    """
    tensors, quant_meta = quantize_state_dict_int8(state_dict, keep_float_patterns)
    container = pack_tensor_container(tensors, {"quant": quant_meta, "extra": extra_meta or {}})
    return compress_model_bytes(container, compressor, shuffle_stride)


def unpack_model_artifact(blob: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """Decompress, parse and dequantise a model blob; return (state dict, meta).

    The meta has ``extra`` (what the packer passed), ``quant`` (per-tensor schemes), ``compressor`` and
    ``shuffle_stride``. Anything that is not a pgolf blob (a pickle, a torch.save zip, a damaged file)
    raises ArtifactError before any of its content is interpreted.
    """
    compressor, stride = describe_compressed_blob(blob)
    tensors, container_meta = unpack_tensor_container(decompress_model_bytes(blob))
    if not isinstance(container_meta.get("quant"), dict):
        raise ArtifactError("model artifact meta lacks its 'quant' section; it was not written by pack_model_artifact.")
    state_dict = dequantize_state_dict_int8(tensors, container_meta["quant"])
    meta = {
        "extra": container_meta.get("extra", {}),
        "quant": container_meta["quant"],
        "compressor": compressor,
        "shuffle_stride": stride,
    }
    return state_dict, meta


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
