"""Reading the byte sidecars of a validation split (CaseOps, SPEC 5.10): found, checked, loaded.

A validation shard ``fineweb_val_000003.bin`` of a CaseOps dataset has ``fineweb_val_bytes_000003.bin``
beside it, one count per token of the bytes that token stands for (:mod:`pgolf.data.val_bytes`). This
module turns them into the run's :class:`~pgolf.data.val_bytes.TargetBytes`, refusing anything that
would score wrongly: a shard without its sidecar, a sidecar without its shard, a count per token that
does not line up.

It runs only when BYTE_SIDECARS is not ``off`` (:func:`pgolf.data.run_data.validation_target_bytes`),
so the export of a run on data without sidecars leaves it out; the cheap refusal of sidecars with
``off`` is a glob in :mod:`pgolf.data.val_bytes`.
"""

import os
from pathlib import Path

import numpy as np
import torch

from pgolf.data.shards import read_shard, read_shard_header
from pgolf.data.val_bytes import (TARGET_BYTES_FROM_SIDECARS, VAL_SHARD_PREFIX, VAL_SIDECAR_PREFIX, TargetBytes,
                                  list_byte_sidecars)
from pgolf.errors import DataError

BYTE_SIDECARS_EXPORT_SWITCH = "byte_sidecars != 'off'"


def byte_sidecar_path(val_file: str | os.PathLike) -> Path:
    """``.../fineweb_val_000003.bin`` -> ``.../fineweb_val_bytes_000003.bin``."""
    val_file = Path(val_file)
    if not val_file.name.startswith(VAL_SHARD_PREFIX):
        raise DataError(f"{val_file} is not named like a validation shard ({VAL_SHARD_PREFIX}*.bin).")
    return val_file.with_name(VAL_SIDECAR_PREFIX + val_file.name[len(VAL_SHARD_PREFIX):])


def find_byte_sidecars(val_files: list[Path]) -> list[Path] | None:
    """The sidecar of every validation shard, in order, or None when the folder holds no sidecar.

    DataError when only some shards have one, when a sidecar has no shard, or when a sidecar's entry
    count differs from its shard's token count: scoring such a dataset could only be wrong.
    """
    folders = sorted({Path(f).parent for f in val_files})
    present = [p for folder in folders for p in list_byte_sidecars(folder)]
    if not present:
        return None
    expected = [byte_sidecar_path(f) for f in val_files]
    missing = [p for p in expected if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} validation shard(s) have no byte sidecar, e.g. {missing[0]}, while "
                        f"{present[0].name} exists: the dataset is a CaseOps export with files missing. Fetch or "
                        "re-export the sidecars (pgolf data fineweb / pgolf data build --caseops).")
    orphans = sorted(set(present) - set(expected))
    if orphans:
        raise DataError(f"byte sidecar {orphans[0]} has no validation shard beside it; remove it or restore the "
                        "shard it belongs to.")
    for shard, sidecar in zip(val_files, expected):
        tokens, counts = read_shard_header(shard), read_shard_header(sidecar)
        if tokens != counts:
            raise DataError(f"byte sidecar {sidecar} has {counts} entries but {shard} has {tokens} tokens; it must "
                            "hold one count per token. Fetch or re-export both files.")
    return expected


def load_byte_sidecars(sidecars: list[Path], num_tokens: int) -> torch.Tensor:
    """The first ``num_tokens`` sidecar counts of the concatenated sidecars (int32)."""
    pieces, remaining = [], num_tokens
    for path in sidecars:
        if remaining <= 0:
            break
        counts = read_shard(path)
        pieces.append(np.array(counts[:remaining], dtype=np.int32))
        remaining -= len(pieces[-1])
    if remaining > 0:
        raise DataError(f"the byte sidecars hold fewer counts than the {num_tokens} validation tokens.")
    return torch.from_numpy(np.concatenate(pieces))


def target_bytes_from_sidecars(counts: torch.Tensor, tokens: torch.Tensor, bos_id: int,
                               where: str | os.PathLike = "the byte sidecars") -> TargetBytes:
    """Bytes of every target of ``tokens`` from their per-token sidecar ``counts`` (same length).

    A document's BOS stands for no text: a nonzero count there means the sidecar is shifted against
    its shard (or belongs to another one), which is refused.
    """
    if counts.numel() != tokens.numel():
        raise DataError(f"{where}: {counts.numel()} byte counts for {tokens.numel()} tokens; one per token expected.")
    at_bos = counts[tokens.to("cpu") == bos_id]
    if at_bos.numel() and bool((at_bos != 0).any()):
        position = int(((tokens.to("cpu") == bos_id) & (counts != 0)).nonzero()[0])
        raise DataError(f"{where}: the validation token at position {position} is a BOS (id {bos_id}) but its byte "
                        f"count is {int(counts[position])}, not 0: the sidecar does not line up with the shard. "
                        "Fetch or re-export both files together.")
    return TargetBytes(counts[1:].to(torch.int32).clone(), TARGET_BYTES_FROM_SIDECARS)
