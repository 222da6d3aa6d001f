"""A tensor container that never unpickles.

``torch.save`` / ``torch.load`` use pickle, and unpickling a file can run arbitrary code. Artifacts are
passed around between people, so pgolf stores tensors in a plain binary layout instead; loading one
only parses JSON and copies bytes.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"PGTC"
    4       1     format version (currently 1)
    5       4     uint32 header length H
    9       32    sha256 digest of everything after it (header bytes + payload)
    41      H     header: compact UTF-8 JSON {"tensors": [...], "meta": {...}}
    41+H    ...   payload: the raw little-endian bytes of every tensor, concatenated in header order

Each entry of ``tensors`` is ``{"name", "dtype", "shape", "offset", "nbytes"}``; ``offset`` counts from
the start of the payload, tensors are packed back to back with no padding, and the payload ends exactly
after the last one. ``meta`` is the caller's JSON-able dict, returned unchanged.

The digest sits outside the JSON and covers the header as well as the payload, so a flipped byte in a
tensor name or in ``meta`` is detected too, not only damage to the tensor bytes. The JSON is written
without spaces because every byte of the artifact counts against the 16,000,000-byte cap.
"""

import hashlib
import json
import math
import struct
import sys

import numpy as np
import torch

from pgolf.errors import ArtifactError, PgolfError

TENSOR_CONTAINER_MAGIC = b"PGTC"
TENSOR_CONTAINER_VERSION = 1
# magic, version byte, uint32 header length, then the 32-byte sha256 digest.
_CONTAINER_PREFIX = struct.Struct("<4sBI32s")

# Names are torch's own dtype names, so a header is readable by eye.
CONTAINER_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
_CONTAINER_DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in CONTAINER_DTYPES.items()}


def container_dtype_name(dtype: torch.dtype) -> str:
    """The name under which ``dtype`` is stored in a container header (raises for unsupported dtypes)."""
    if dtype not in _CONTAINER_DTYPE_NAMES:
        raise ArtifactError(
            f"dtype {dtype} cannot be stored in a pgolf tensor container; supported dtypes are "
            f"{', '.join(CONTAINER_DTYPES)}. Cast the tensor to one of them before packing."
        )
    return _CONTAINER_DTYPE_NAMES[dtype]


def _require_little_endian_host() -> None:
    # Raw tensor bytes are written in host order and declared little-endian; a big-endian host would
    # silently produce a different file, so refuse rather than corrupt.
    if sys.byteorder != "little":
        raise PgolfError("pgolf tensor containers need a little-endian machine (x86-64 or ARM).")


def _tensor_raw_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's elements as raw bytes in row-major order (0-d and empty tensors included)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _encode_container_header(header: dict) -> bytes:
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ArtifactError(
            f"container meta must be JSON-serialisable (str/int/float/bool/None, lists, dicts with str keys, "
            f"no NaN/inf): {error}. Convert the offending meta value before packing."
        ) from None
    return text.encode("utf-8")


def pack_tensor_container(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    """Serialise ``tensors`` (name -> tensor) and a JSON-able ``meta`` dict into container bytes."""
    _require_little_endian_host()
    if not isinstance(meta, dict):
        raise ArtifactError(f"container meta must be a dict, got {type(meta).__name__}.")
    entries, chunks, offset = [], [], 0
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ArtifactError(f"container entries must map str names to tensors; got {name!r}: {type(tensor).__name__}.")
        raw = _tensor_raw_bytes(tensor)
        entries.append({
            "name": name,
            "dtype": container_dtype_name(tensor.dtype),
            "shape": list(tensor.shape),
            "offset": offset,
            "nbytes": len(raw),
        })
        chunks.append(raw)
        offset += len(raw)
    header_bytes = _encode_container_header({"tensors": entries, "meta": meta})
    payload = b"".join(chunks)
    digest = hashlib.sha256(header_bytes + payload).digest()
    prefix = _CONTAINER_PREFIX.pack(TENSOR_CONTAINER_MAGIC, TENSOR_CONTAINER_VERSION, len(header_bytes), digest)
    return prefix + header_bytes + payload


def _split_container(data: bytes) -> tuple[bytes, bytes]:
    """Check magic, version, lengths and digest; return (header bytes, payload bytes)."""
    if len(data) < _CONTAINER_PREFIX.size:
        raise ArtifactError(
            f"tensor container is truncated: {len(data)} bytes, shorter than its {_CONTAINER_PREFIX.size}-byte "
            "prefix. The file is incomplete; re-create or re-copy it."
        )
    magic, version, header_length, digest = _CONTAINER_PREFIX.unpack_from(data)
    if magic != TENSOR_CONTAINER_MAGIC:
        raise ArtifactError(
            f"not a pgolf tensor container (magic {magic!r}, expected {TENSOR_CONTAINER_MAGIC!r}). pgolf never "
            "loads pickle/torch.save files because unpickling can execute code; re-pack the model with pgolf."
        )
    if version != TENSOR_CONTAINER_VERSION:
        raise ArtifactError(
            f"tensor container format version {version} is not supported (this pgolf reads version "
            f"{TENSOR_CONTAINER_VERSION}); use the pgolf version that wrote the artifact."
        )
    body = data[_CONTAINER_PREFIX.size:]
    if header_length > len(body):
        raise ArtifactError(
            f"tensor container is truncated: header says {header_length} header bytes but only {len(body)} "
            "bytes follow the prefix. Re-create or re-copy the file (an artifact, checkpoint or final weights)."
        )
    if hashlib.sha256(body).digest() != digest:
        raise ArtifactError(
            "tensor container is corrupt: its sha256 digest does not match its contents (a truncated or "
            "damaged file). Re-create or re-copy the file (an artifact, checkpoint or final weights)."
        )
    return body[:header_length], body[header_length:]


def _parse_container_header(header_bytes: bytes) -> tuple[list, dict]:
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ArtifactError(f"tensor container header is not valid UTF-8 JSON: {error}.") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list) or not isinstance(header.get("meta"), dict):
        raise ArtifactError('tensor container header must be a JSON object with a "tensors" list and a "meta" object.')
    return header["tensors"], header["meta"]


def _is_plain_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_container_entry(entry, expected_offset: int, payload_length: int) -> tuple[str, torch.dtype, tuple]:
    """Validate one header entry against the payload; return (name, dtype, shape)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ArtifactError(f"tensor container entry {entry!r} needs a string 'name'.")
    name = entry["name"]
    dtype = CONTAINER_DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise ArtifactError(f"tensor {name!r} has unknown dtype {entry.get('dtype')!r}; known: {', '.join(CONTAINER_DTYPES)}.")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_plain_int(dim) and dim >= 0 for dim in shape):
        raise ArtifactError(f"tensor {name!r} has an invalid shape {shape!r} (expected a list of non-negative ints).")
    offset, nbytes = entry.get("offset"), entry.get("nbytes")
    if not (_is_plain_int(offset) and _is_plain_int(nbytes)):
        raise ArtifactError(f"tensor {name!r} needs integer 'offset' and 'nbytes'.")
    expected_nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes != expected_nbytes:
        raise ArtifactError(f"tensor {name!r}: nbytes {nbytes} does not match shape {shape} of {entry['dtype']} ({expected_nbytes}).")
    if offset != expected_offset or offset + nbytes > payload_length:
        raise ArtifactError(
            f"tensor {name!r}: bytes [{offset}, {offset + nbytes}) are out of range (expected offset "
            f"{expected_offset}, payload has {payload_length} bytes)."
        )
    return name, dtype, tuple(shape)


def _tensor_from_raw_bytes(raw: bytes, dtype: torch.dtype, shape: tuple, name: str) -> torch.Tensor:
    if len(raw) == 0:
        return torch.empty(shape, dtype=dtype)
    as_bytes = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())
    if dtype == torch.bool and int(as_bytes.max()) > 1:
        raise ArtifactError(f"tensor {name!r} is declared bool but holds bytes other than 0 and 1.")
    return as_bytes.view(dtype).reshape(shape)


CONTAINER_PREFIX_BYTES = _CONTAINER_PREFIX.size


def container_header_end(prefix: bytes) -> int:
    """Where the header ends in a container that starts with ``prefix`` (its first CONTAINER_PREFIX_BYTES)."""
    if len(prefix) < _CONTAINER_PREFIX.size or prefix[:len(TENSOR_CONTAINER_MAGIC)] != TENSOR_CONTAINER_MAGIC:
        raise ArtifactError("not the start of a pgolf tensor container (magic or prefix missing); the data is corrupt.")
    _, _, header_length, _ = _CONTAINER_PREFIX.unpack_from(prefix)
    return _CONTAINER_PREFIX.size + header_length


def declared_container_bytes(head: bytes) -> int:
    """The size a container declares for itself, from ``head`` (its prefix and header; the payload may be
    absent): prefix + header + every tensor's ``nbytes``. A reader bounds decompression by it before a
    payload byte is produced (a decompression bomb declares less than it holds, or too much to accept)."""
    header_end = container_header_end(head)
    if len(head) < header_end:
        raise ArtifactError(f"tensor container is truncated inside its header ({len(head)} of {header_end} bytes); "
                            "re-create or re-copy the file.")
    entries, _ = _parse_container_header(head[_CONTAINER_PREFIX.size:header_end])
    payload = 0
    for entry in entries:
        nbytes = entry.get("nbytes") if isinstance(entry, dict) else None
        if not _is_plain_int(nbytes) or nbytes < 0:
            raise ArtifactError(f"tensor container entry {entry!r:.80} has no valid 'nbytes'; the data is corrupt.")
        payload += nbytes
    return header_end + payload


def unpack_tensor_container(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """Parse container bytes into (name -> tensor, meta). Never executes code from the data."""
    _require_little_endian_host()
    header_bytes, payload = _split_container(bytes(data))
    entries, meta = _parse_container_header(header_bytes)
    tensors: dict[str, torch.Tensor] = {}
    offset = 0
    for entry in entries:
        name, dtype, shape = _check_container_entry(entry, offset, len(payload))
        if name in tensors:
            raise ArtifactError(f"tensor container lists tensor {name!r} twice.")
        tensors[name] = _tensor_from_raw_bytes(payload[offset:offset + entry["nbytes"]], dtype, shape, name)
        offset += entry["nbytes"]
    if offset != len(payload):
        raise ArtifactError(
            f"tensor container has {len(payload) - offset} unexplained bytes after its last tensor; "
            "the file is damaged or was not written by pgolf."
        )
    return tensors, meta
