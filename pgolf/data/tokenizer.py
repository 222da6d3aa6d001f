"""SentencePiece loading and the byte tables that turn token counts into bytes for BPB (SPEC 2.8).

Bits per byte divides the summed loss by the number of UTF-8 bytes of the scored text. The bytes of
each target token come from three tables built once from the tokenizer:

* ``base_bytes[t]``: UTF-8 length of the piece without its leading ``▁`` (1 for byte-fallback pieces,
  0 for control/unknown/unused pieces and for ids beyond the tokenizer's vocabulary);
* ``has_leading_space[t]``: the piece starts with ``▁``, which decodes to one space byte;
* ``is_boundary[t]``: control/unknown/unused ids (BOS among them) and ids beyond the vocabulary.

The space is charged only when the previous token is not a boundary, because SentencePiece drops the
leading space of a document's first piece when decoding. The tests check these tables against
``decode`` for every vocabulary id and on real text: byte-count bugs have sunk challenge records.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch

from pgolf.errors import DataError

SENTENCEPIECE_SPACE = "\u2581"


def load_sentencepiece(path: str | os.PathLike) -> spm.SentencePieceProcessor:
    """Load a SentencePiece ``.model`` file; DataError if it is missing, misnamed or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer {path} does not exist. Set TOKENIZER_PATH to a SentencePiece .model file.")
    if path.suffix != ".model":
        raise DataError(
            f"tokenizer {path} does not end in .model; TOKENIZER_PATH must point at the SentencePiece .model "
            "file (not the .vocab text file)."
        )
    processor = spm.SentencePieceProcessor()
    try:
        processor.load(str(path))
    except (OSError, RuntimeError) as exc:
        raise DataError(f"tokenizer {path} could not be loaded by SentencePiece ({exc}); the file is corrupt. Fetch it again.") from exc
    return processor


def check_tokenizer_vocab(sp: spm.SentencePieceProcessor, vocab_size: int, path: str | os.PathLike) -> None:
    """DataError unless the tokenizer at ``path`` has exactly ``vocab_size`` pieces."""
    actual = sp.vocab_size()
    if actual != vocab_size:
        raise DataError(
            f"tokenizer {path} has {actual} pieces but VOCAB_SIZE is {vocab_size}. Set VOCAB_SIZE={actual}, or set "
            f"TOKENIZER_PATH to the tokenizer with {vocab_size} pieces that the shards were exported with."
        )


@dataclass(frozen=True)
class ByteTables:
    """Per-token byte tables (index = token id), all of size ``max(sp vocab, model vocab)``."""

    base_bytes: torch.Tensor  # int16
    has_leading_space: torch.Tensor  # bool
    is_boundary: torch.Tensor  # bool

    def to(self, device: str | torch.device) -> "ByteTables":
        """The same tables on ``device`` (returns ``self`` when they are already there)."""
        device = torch.device(device)
        if self.base_bytes.device == device:
            return self
        return ByteTables(
            base_bytes=self.base_bytes.to(device),
            has_leading_space=self.has_leading_space.to(device),
            is_boundary=self.is_boundary.to(device),
        )


def _classify_piece(sp: spm.SentencePieceProcessor, token_id: int) -> tuple[int, bool, bool]:
    """``(base_bytes, has_leading_space, is_boundary)`` of one vocabulary id."""
    if sp.is_control(token_id) or sp.is_unknown(token_id) or sp.is_unused(token_id):
        return 0, False, True
    if sp.is_byte(token_id):
        return 1, False, False
    piece = sp.id_to_piece(token_id)
    has_space = piece.startswith(SENTENCEPIECE_SPACE)
    if has_space:
        piece = piece[1:]  # exactly one: the rest (if any) is part of the piece's own text
    return len(piece.encode("utf-8")), has_space, False


def _require_standalone_space_piece(sp: spm.SentencePieceProcessor) -> None:
    """Without a bare ``▁`` piece, some spaces would be encoded in ways the tables do not charge."""
    space_id = sp.piece_to_id(SENTENCEPIECE_SPACE)
    if sp.id_to_piece(space_id) != SENTENCEPIECE_SPACE or sp.is_unknown(space_id):
        raise DataError(
            "the tokenizer has no standalone '\u2581' (space) piece, so bits-per-byte byte counts would be wrong. "
            "Retrain it with byte_fallback=True and enough vocabulary, or use an official tokenizer."
        )


def build_byte_tables(sp: spm.SentencePieceProcessor, vocab_size: int) -> ByteTables:
    """Build the BPB byte tables of ``sp`` for a model with ``vocab_size`` output ids (SPEC 2.8)."""
    _require_standalone_space_piece(sp)
    sp_vocab = sp.vocab_size()
    table_size = max(sp_vocab, vocab_size)
    base_bytes = [0] * table_size
    has_leading_space = [False] * table_size
    is_boundary = [True] * table_size  # ids beyond the tokenizer's vocabulary stay 0-byte boundaries
    for token_id in range(sp_vocab):
        base_bytes[token_id], has_leading_space[token_id], is_boundary[token_id] = _classify_piece(sp, token_id)
    return ByteTables(
        base_bytes=torch.tensor(base_bytes, dtype=torch.int16),
        has_leading_space=torch.tensor(has_leading_space, dtype=torch.bool),
        is_boundary=torch.tensor(is_boundary, dtype=torch.bool),
    )


def count_target_bytes(tables: ByteTables, prev_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """UTF-8 bytes of each target token given the token before it (int32, shape of ``target_ids``).

    ``bytes = base_bytes[t] + (has_leading_space[t] and not is_boundary[prev])``. Tables are moved to
    the targets' device when needed; call ``tables.to(device)`` once to avoid repeated copies.
    """
    if prev_ids.shape != target_ids.shape:
        raise ValueError(f"prev_ids shape {tuple(prev_ids.shape)} != target_ids shape {tuple(target_ids.shape)}")
    tables = tables.to(target_ids.device)
    prev_ids = prev_ids.to(target_ids.device).long()
    target_ids = target_ids.long()
    base = tables.base_bytes[target_ids].to(torch.int32)
    space = tables.has_leading_space[target_ids] & ~tables.is_boundary[prev_ids]
    return base + space.to(torch.int32)
