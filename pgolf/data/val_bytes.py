"""The bytes of every validation target: the one source of the bits-per-byte denominator (SPEC 2.8, 5.10).

Bits per byte divides the summed loss by the bytes of the scored text. For each target those bytes
come from one of two places, decided by the dataset (and checked against BYTE_SIDECARS, below):

* the tokenizer's byte tables (:mod:`pgolf.data.tokenizer`): counted from the target and the token
  before it, for shards whose tokens spell the text itself;
* byte sidecars, when the validation shards have them (``fineweb_val_bytes_000000.bin`` beside
  ``fineweb_val_000000.bin``, CaseOps, SPEC 5.10): one count per token of the UTF-8 bytes of the text
  with the case transform undone, because the tokens spell a transformed text whose own bytes are not
  the ones to score. Which text is the dataset's byte convention (:func:`dataset_byte_convention`):
  ``decoded`` (the challenge's) or ``original`` (the raw documents).

A dataset with sidecars is always scored with them: no setting can ignore them. BYTE_SIDECARS only
says what the run expects (:func:`pgolf.data.run_data.validation_target_bytes`): ``auto`` finds out,
``on`` requires them, ``off`` refuses a dataset that has them (a glob, :func:`list_byte_sidecars`). Every
validation shard must have its sidecar, and a tokenizer with CaseOps operator pieces is refused for a
dataset without sidecars (its byte tables would charge the invented operator characters). Reading the
sidecars is :mod:`pgolf.data.byte_sidecars`, which an export with BYTE_SIDECARS=off leaves out.

:class:`TargetBytes` holds the resolved count of every target once; every evaluator (plain, sliding,
score-first TTT, LoRA TTT) asks it for the bytes of the targets it scored with :meth:`TargetBytes.sum_of`,
so the choice between tables and sidecars is made in exactly one place (:func:`resolve_target_bytes`).
Target ``i`` is the one that predicts token ``i + 1`` of the validation stream.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pgolf.data.caseops import (CASEOPS_BYTE_CONVENTION_KEY, CASEOPS_BYTE_CONVENTIONS, CASEOPS_DEFAULT_BYTE_CONVENTION)
from pgolf.data.tokenizer import ByteTables, count_target_bytes
from pgolf.data.tokenizer_match import DATASET_MANIFEST_NAME, read_dataset_manifest
from pgolf.errors import DataError

VAL_SHARD_PREFIX = "fineweb_val_"
VAL_SIDECAR_PREFIX = "fineweb_val_bytes_"
VAL_SIDECAR_GLOB = VAL_SIDECAR_PREFIX + "*.bin"
TARGET_BYTES_CHUNK_TOKENS = 1 << 22  # counting from the tables in chunks bounds the temporary tensors
TARGET_BYTES_FROM_TABLES = "tokenizer byte tables"
TARGET_BYTES_FROM_SIDECARS = "byte sidecars"


def list_byte_sidecars(directory: str | os.PathLike) -> list[Path]:
    """The byte sidecars in ``directory``, sorted; empty when it has none."""
    return sorted(Path(directory).glob(VAL_SIDECAR_GLOB))


def dataset_byte_convention(data_dir: str | os.PathLike) -> tuple[str, bool]:
    """The byte convention of the sidecars in ``data_dir`` (``decoded`` or ``original``, see
    :mod:`pgolf.data.caseops`) and whether its manifest names it. A manifest that names none (the
    record's export, or no manifest at all) is taken as ``decoded``: the challenge's convention, which
    the record's sidecars follow. A value pgolf does not know is a DataError."""
    manifest = read_dataset_manifest(data_dir) or {}
    datasets = manifest.get("datasets") or [{}]
    entry = datasets[0] if isinstance(datasets[0], dict) else {}
    named = entry.get(CASEOPS_BYTE_CONVENTION_KEY)
    if named is None:
        return CASEOPS_DEFAULT_BYTE_CONVENTION, False
    if named not in CASEOPS_BYTE_CONVENTIONS:
        raise DataError(f"{Path(data_dir) / DATASET_MANIFEST_NAME}: {CASEOPS_BYTE_CONVENTION_KEY} is {named!r}, "
                        f"not one of {', '.join(map(repr, CASEOPS_BYTE_CONVENTIONS))}; the manifest was altered or "
                        "written by another tool. Restore it, or rebuild the dataset (pgolf data build --caseops).")
    return named, True


@dataclass(frozen=True)
class TargetBytes:
    """Bytes of every validation target (``per_target[i]``: the bytes token ``i + 1`` adds), on the CPU."""

    per_target: torch.Tensor  # int32, one entry per target
    source: str  # TARGET_BYTES_FROM_TABLES or TARGET_BYTES_FROM_SIDECARS

    @property
    def num_targets(self) -> int:
        return self.per_target.numel()

    def total(self) -> int:
        return int(self.per_target.sum(dtype=torch.int64))

    def sum_of(self, targets: range | slice | torch.Tensor) -> int:
        """Bytes of the scored targets ``targets``: a contiguous range (or slice) or a tensor of indices."""
        if isinstance(targets, range):
            if targets.step != 1:
                raise ValueError(f"target ranges must have step 1, got {targets}")
            targets = slice(targets.start, targets.stop)
        if isinstance(targets, slice):
            if targets.stop is not None and targets.stop > self.num_targets:
                raise IndexError(f"targets up to {targets.stop} asked for, only {self.num_targets} counted")
            return int(self.per_target[targets].sum(dtype=torch.int64))
        return int(self.per_target[targets.to("cpu", torch.int64)].sum(dtype=torch.int64))


def target_bytes_from_tables(tables: ByteTables, tokens: torch.Tensor) -> TargetBytes:
    """Bytes of every target of ``tokens`` counted with the tokenizer's byte tables (SPEC 2.8)."""
    tokens = tokens.to("cpu", torch.int64)
    tables = tables.to("cpu")
    num_targets = max(tokens.numel() - 1, 0)
    parts = []
    for start in range(0, num_targets, TARGET_BYTES_CHUNK_TOKENS):
        stop = min(start + TARGET_BYTES_CHUNK_TOKENS, num_targets)
        parts.append(count_target_bytes(tables, tokens[start: stop], tokens[start + 1: stop + 1]))
    per_target = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)
    return TargetBytes(per_target.to(torch.int32), TARGET_BYTES_FROM_TABLES)


def resolve_target_bytes(source: "ByteTables | TargetBytes", val_tokens: torch.Tensor) -> TargetBytes:
    """The evaluators' byte source as per-target counts: byte tables are applied to ``val_tokens``;
    counts already resolved (a run's validation data) must cover every target of ``val_tokens``."""
    if isinstance(source, ByteTables):
        return target_bytes_from_tables(source, val_tokens)
    if not isinstance(source, TargetBytes):
        raise TypeError(f"expected ByteTables or TargetBytes, got {type(source).__name__}")
    if source.num_targets < val_tokens.numel() - 1:
        raise ValueError(f"byte counts for {source.num_targets} targets, but {val_tokens.numel() - 1} are scored")
    return source
