"""The layout half of ``COMPRESSOR=pergroup`` (SPEC 5.11): role groups, row reordering, transposition.

TOP's artifact does not compress the container as one stream. It takes the int8 codes of the
quantised matrices out, groups them by role, reorders and transposes them so that similar bytes sit
next to each other, and compresses each group on its own. This module does the reshuffling; the
compression of each stream (and the outer frame) is in :mod:`pgolf.artifact.compress`.

Starting from a pgolf tensor container (the bytes :func:`pgolf.artifact.container.pack_tensor_container`
wrote), :func:`split_container_by_role` returns raw streams:

* stream 0, the residual: a tensor container holding everything that is not grouped (scales,
  passthrough tensors, gates, LQER factors, the codes of other matrices), the row permutations
  (uint16 values, stored bit for bit as int16 tensors ``pergroup.perm:<name>``) and, in its meta, the
  manifest: the original meta, the original tensor order, each group's tensors and shapes, and the
  sha256 of the original container bytes;
* one stream per non-empty role, in :data:`PERGROUP_ROLES` order: the codes of every ``<name>.q``
  int8 matrix of that role, layers in index order. For ``tok_emb``, ``c_q``, ``fc`` (and an untied
  ``lm_head``, a pgolf addition) each matrix's rows are first reordered by a greedy L1
  nearest-neighbour chain from row 0 (:func:`greedy_l1_row_chain`); every matrix is then written
  column by column (transposed), so a stream runs down similar rows.

:func:`join_container_streams` inverts it and rebuilds the original container byte for byte; the
sha256 check makes any difference an error. The streams travel in a small frame of their own::

    b"PGRP" | version (1 byte) | uint32 stream count N | N x uint32 stream length | streams

All integers are little-endian; there is no pickle anywhere.
"""

import hashlib
import re
import struct

import numpy as np
import torch

from pgolf.artifact.container import TENSOR_CONTAINER_MAGIC, pack_tensor_container, unpack_tensor_container
from pgolf.errors import ArtifactError

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
PERGROUP_EXPORT_SWITCH = "compressor in ('pergroup', 'pergroup_lrzip', 'auto')"
PERGROUP_MAGIC = b"PGRP"
PERGROUP_VERSION = 1
PERGROUP_PERM_PREFIX = "pergroup.perm:"
# Row permutations are stored as uint16, so a reordered matrix may have at most this many rows.
PERGROUP_MAX_PERMUTED_ROWS = 65_536
# (role, pattern of the code tensor's name, reorder rows?). Layer index = the pattern's group "layer".
PERGROUP_ROLES: tuple[tuple[str, str, bool], ...] = (
    ("tok_emb", r"^(?:.*\.)?tok_emb\.weight\.q$", True),
    ("c_k", r"^(?:.*\.)?blocks\.(?P<layer>\d+)\.attn\.c_k\.weight\.q$", False),
    ("c_q", r"^(?:.*\.)?blocks\.(?P<layer>\d+)\.attn\.c_q\.weight\.q$", True),
    ("c_v", r"^(?:.*\.)?blocks\.(?P<layer>\d+)\.attn\.c_v\.weight\.q$", False),
    ("attn_proj", r"^(?:.*\.)?blocks\.(?P<layer>\d+)\.attn\.proj\.weight\.q$", False),
    ("fc", r"^(?:.*\.)?blocks\.(?P<layer>\d+)\.mlp\.fc\.weight\.q$", True),
    ("mlp_proj", r"^(?:.*\.)?blocks\.(?P<layer>\d+)\.mlp\.proj\.weight\.q$", False),
    ("lm_head", r"^(?:.*\.)?lm_head\.weight\.q$", True),
)
_PERGROUP_COUNT = struct.Struct("<4sBI")
# Rows of the chain's working copy are dropped once this fraction of them is used up.
_PERGROUP_COMPACT_FRACTION = 8


def pergroup_role(name: str, tensor: torch.Tensor) -> tuple[str, int, bool] | None:
    """(role, layer index, reorder rows?) of a grouped code tensor, or None if it stays in the residual."""
    if tensor.dtype != torch.int8 or tensor.ndim != 2:
        return None
    for role, pattern, reorder in PERGROUP_ROLES:
        match = re.match(pattern, name)
        if match:
            layer = int(match.group("layer")) if "layer" in match.groupdict() else 0
            return role, layer, reorder and 1 < tensor.shape[0] <= PERGROUP_MAX_PERMUTED_ROWS
    return None


def greedy_l1_row_chain(codes_RC: torch.Tensor) -> torch.Tensor:
    """Row order of a greedy nearest-neighbour chain: start at row 0, then always step to the unused
    row with the smallest L1 distance to the current one (ties: the lowest row index).

    O(R^2 C) work, one vectorised distance row per step: a working copy of the unused rows shrinks as
    they are used (compacted whenever 1/8 of it is dead), so the average step touches ~R/2 rows.
    Codes are compared as offset uint8, where |a - b| = max(a, b) - min(a, b) cannot overflow.
    """
    rows = codes_RC.shape[0]
    if rows <= 1:
        return torch.arange(rows, dtype=torch.int64)
    as_u8 = (codes_RC.to(torch.int16) + 128).to(torch.uint8)
    order = [0]
    alive_ids = torch.arange(1, rows)
    alive = as_u8[1:].clone()
    dead = torch.zeros(rows - 1, dtype=torch.bool)
    dead_count, never = 0, torch.iinfo(torch.int32).max
    for _ in range(rows - 1):
        current = as_u8[order[-1]]
        distance = (torch.maximum(alive, current) - torch.minimum(alive, current)).sum(dim=1, dtype=torch.int32)
        distance.masked_fill_(dead, never)
        pick = int(torch.argmin(distance))  # first minimum = lowest row id, since alive_ids stays sorted
        order.append(int(alive_ids[pick]))
        dead[pick] = True
        dead_count += 1
        if dead_count * _PERGROUP_COMPACT_FRACTION > len(alive_ids):
            keep = ~dead
            alive_ids, alive, dead, dead_count = alive_ids[keep], alive[keep], dead[keep], 0
    return torch.tensor(order, dtype=torch.int64)


def _pergroup_perm_to_stored(order: torch.Tensor) -> torch.Tensor:
    # uint16 values kept bit for bit in an int16 tensor (the container has no uint16 dtype).
    return torch.from_numpy(order.numpy().astype(np.uint16).view(np.int16).copy())


def _pergroup_perm_from_stored(stored: torch.Tensor, rows: int, name: str) -> torch.Tensor:
    order = torch.from_numpy(stored.numpy().view(np.uint16).astype(np.int64))
    if order.shape != (rows,) or not torch.equal(torch.sort(order).values, torch.arange(rows)):
        raise ArtifactError(f"pergroup: the row order of {name!r} is not a permutation of {rows} rows; "
                            "the artifact is corrupt. Re-create or re-copy it.")
    return order


def _pergroup_grouped_names(tensors: dict[str, torch.Tensor]) -> dict[str, list[tuple[int, str, bool]]]:
    """Role -> [(layer, name, reorder)] sorted by layer, roles in PERGROUP_ROLES order (empty ones left out)."""
    groups: dict[str, list[tuple[int, str, bool]]] = {role: [] for role, _, _ in PERGROUP_ROLES}
    for name, tensor in tensors.items():
        found = pergroup_role(name, tensor)
        if found is not None:
            groups[found[0]].append((found[1], name, found[2]))
    return {role: sorted(members) for role, members in groups.items() if members}


def pergroup_applicable(data: bytes) -> bool:
    """True if ``data`` is a tensor container with at least one matrix that pergroup would group."""
    if data[:len(TENSOR_CONTAINER_MAGIC)] != TENSOR_CONTAINER_MAGIC:
        return False
    try:
        tensors, _ = unpack_tensor_container(data)
    except ArtifactError:
        return False
    return bool(_pergroup_grouped_names(tensors))


def _pergroup_group_stream(tensors, members, residual, manifest_tensors) -> bytes:
    """Concatenated column-major codes of one role's matrices (rows reordered where asked)."""
    chunks = []
    for _, name, reorder in members:
        codes_RC = tensors[name]
        perm_name = None
        if reorder:
            order = greedy_l1_row_chain(codes_RC)
            perm_name = PERGROUP_PERM_PREFIX + name
            residual[perm_name] = _pergroup_perm_to_stored(order)
            codes_RC = codes_RC[order]
        chunks.append(codes_RC.t().contiguous().numpy().tobytes())
        manifest_tensors.append([name, int(codes_RC.shape[0]), int(codes_RC.shape[1]), perm_name])
    return b"".join(chunks)


def split_container_by_role(data: bytes) -> list[bytes]:
    """Raw streams of a container: [residual container, role stream, ...] (see the module docstring)."""
    tensors, meta = unpack_tensor_container(data)
    if pack_tensor_container(tensors, meta) != bytes(data):
        raise ArtifactError("pergroup: the container does not re-pack to the same bytes (was it written by pgolf?); "
                            "use another COMPRESSOR.")
    clash = [name for name in tensors if name.startswith(PERGROUP_PERM_PREFIX)]
    if clash:
        raise ArtifactError(f"pergroup: tensor names {clash} use the reserved prefix {PERGROUP_PERM_PREFIX!r}.")
    groups = _pergroup_grouped_names(tensors)
    grouped = {name for members in groups.values() for _, name, _ in members}
    residual = {name: tensor for name, tensor in tensors.items() if name not in grouped}
    manifest_groups, streams = [], []
    for role, members in groups.items():
        manifest_tensors: list[list] = []
        streams.append(_pergroup_group_stream(tensors, members, residual, manifest_tensors))
        manifest_groups.append({"role": role, "tensors": manifest_tensors})
    manifest = {"version": PERGROUP_VERSION, "meta": meta, "order": list(tensors), "groups": manifest_groups,
                "sha256": hashlib.sha256(data).hexdigest()}
    return [pack_tensor_container(residual, {"pergroup": manifest})] + streams


def _pergroup_manifest(meta: dict, stream_count: int) -> dict:
    manifest = meta.get("pergroup") if isinstance(meta, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("version") != PERGROUP_VERSION
            or not isinstance(manifest.get("groups"), list) or not isinstance(manifest.get("order"), list)
            or not isinstance(manifest.get("meta"), dict) or not isinstance(manifest.get("sha256"), str)):
        raise ArtifactError("pergroup: the residual stream has no valid manifest; the artifact is corrupt or from "
                            "another pgolf version.")
    if len(manifest["groups"]) != stream_count - 1:
        raise ArtifactError(f"pergroup: the manifest lists {len(manifest['groups'])} groups but the frame holds "
                            f"{stream_count - 1} group streams; the artifact is corrupt.")
    return manifest


def _pergroup_unpack_group(stream: bytes, group: dict, residual: dict, out: dict) -> None:
    """Cut one role stream back into its matrices (transpose back, undo the row order)."""
    offset = 0
    for name, rows, cols, perm_name in group.get("tensors", []):
        size = rows * cols
        if offset + size > len(stream):
            raise ArtifactError(f"pergroup: the {group.get('role')!r} stream is too short for {name!r}; the artifact "
                                "is truncated or corrupt.")
        codes_CR = torch.from_numpy(np.frombuffer(stream, dtype=np.int8, count=size, offset=offset).copy())
        codes_RC = codes_CR.view(cols, rows).t()
        if perm_name is not None:
            if perm_name not in residual:
                raise ArtifactError(f"pergroup: the row order of {name!r} is missing; the artifact is corrupt.")
            original = torch.empty_like(codes_RC)
            original[_pergroup_perm_from_stored(residual[perm_name], rows, name)] = codes_RC
            codes_RC = original
        out[name] = codes_RC.contiguous()
        offset += size
    if offset != len(stream):
        raise ArtifactError(f"pergroup: the {group.get('role')!r} stream has {len(stream) - offset} bytes too many; "
                            "the artifact is corrupt.")


def pergroup_stream_sizes(residual: bytes, stream_count: int) -> list[int]:
    """The size of each role stream as the residual container's manifest declares it (rows x cols of
    every matrix in the group): what each stream may decompress to, known before it is decompressed."""
    _, meta = unpack_tensor_container(residual)
    manifest = _pergroup_manifest(meta, stream_count)
    sizes = []
    for group in manifest["groups"]:
        try:
            shapes = [(entry[1], entry[2]) for entry in group["tensors"]]
        except (TypeError, KeyError, IndexError):
            shapes = None
        if shapes is None or not all(isinstance(dim, int) and dim >= 0 for shape in shapes for dim in shape):
            raise ArtifactError(f"pergroup: the manifest entry of group {group!r:.80} is malformed; the artifact is "
                                "corrupt.")
        sizes.append(sum(rows * cols for rows, cols in shapes))
    return sizes


def join_container_streams(streams: list[bytes]) -> bytes:
    """Rebuild the original container from the raw streams of :func:`split_container_by_role`."""
    if not streams:
        raise ArtifactError("pergroup: no streams; the artifact is corrupt.")
    residual, meta = unpack_tensor_container(streams[0])
    manifest = _pergroup_manifest(meta, len(streams))
    grouped: dict[str, torch.Tensor] = {}
    for stream, group in zip(streams[1:], manifest["groups"]):
        try:
            _pergroup_unpack_group(stream, group, residual, grouped)
        except (TypeError, ValueError, AttributeError, RuntimeError) as error:  # a malformed manifest entry
            raise ArtifactError(f"pergroup: the manifest entry of group {group!r:.80} is malformed ({error}); the "
                                "artifact is corrupt.") from None
    tensors = {}
    for name in manifest["order"]:
        source = grouped if name in grouped else residual
        if name not in source:
            raise ArtifactError(f"pergroup: tensor {name!r} is missing from every stream; the artifact is corrupt.")
        tensors[name] = source[name]
    rebuilt = pack_tensor_container(tensors, manifest["meta"])
    if hashlib.sha256(rebuilt).hexdigest() != manifest["sha256"]:
        raise ArtifactError("pergroup: the rebuilt container does not match the original's sha256; the "
                            "artifact is corrupt. Re-create or re-copy it.")
    return rebuilt


def pack_pergroup_streams(streams: list[bytes]) -> bytes:
    """The PGRP frame around already compressed streams."""
    header = _PERGROUP_COUNT.pack(PERGROUP_MAGIC, PERGROUP_VERSION, len(streams))
    lengths = struct.pack(f"<{len(streams)}I", *(len(stream) for stream in streams))
    return header + lengths + b"".join(streams)


def unpack_pergroup_streams(data: bytes) -> list[bytes]:
    """The streams of a PGRP frame; a wrong magic, version or length is an ArtifactError."""
    if len(data) < _PERGROUP_COUNT.size:
        raise ArtifactError(f"pergroup frame is truncated ({len(data)} bytes); re-create or re-copy the artifact.")
    magic, version, count = _PERGROUP_COUNT.unpack_from(data)
    if magic != PERGROUP_MAGIC or version != PERGROUP_VERSION:
        raise ArtifactError(f"not a pergroup frame of version {PERGROUP_VERSION} (magic {magic!r}, version {version}); "
                            "the artifact is corrupt or from another pgolf version.")
    table_end = _PERGROUP_COUNT.size + 4 * count
    if count == 0 or len(data) < table_end:
        raise ArtifactError(f"pergroup frame declares {count} streams but is too short for them; it is truncated.")
    lengths = struct.unpack_from(f"<{count}I", data, _PERGROUP_COUNT.size)
    if table_end + sum(lengths) != len(data):
        raise ArtifactError(f"pergroup frame: its streams add up to {sum(lengths)} bytes but {len(data) - table_end} "
                            "follow the table; the artifact is truncated or corrupt.")
    streams, offset = [], table_end
    for length in lengths:
        streams.append(bytes(data[offset:offset + length]))
        offset += length
    return streams

