"""What a training run reads: the validation split (checked before any training) and its training loader.

Validation tokens and training batches come from different files by construction: the splits are
checked disjoint here, and every training loader refuses validation shards itself.

Everything that could make the score wrong is refused here, before a step is trained: a tokenizer
that did not make the shards (:mod:`pgolf.data.tokenizer_match`), a ``BOS_TOKEN_ID`` that is not the
tokenizer's, validation ids beyond the vocabulary, and CaseOps data scored without its byte sidecars
(:mod:`pgolf.data.val_bytes`: sidecars are found and used automatically, and required when the
tokenizer has the CaseOps operator pieces).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch

from pgolf.config import Config
from pgolf.data.caseops import is_caseops_tokenizer
from pgolf.data.loader import DistributedTokenLoader, assert_disjoint_splits, load_validation_tokens
from pgolf.data.shards import find_shards
from pgolf.data.shuffled import ShuffledSequenceLoader
from pgolf.data.tokenizer import build_byte_tables, check_tokenizer_vocab, load_sentencepiece
from pgolf.data.tokenizer_match import check_bos_token_id, check_tokenizer_matches_shards
from pgolf.data.val_bytes import (TargetBytes, find_byte_sidecars, load_byte_sidecars, target_bytes_from_sidecars,
                                  target_bytes_from_tables)
from pgolf.dist import DistContext
from pgolf.errors import DataError

# TRAIN_LOADER -> training loader class (same constructor and interface).
TRAIN_LOADERS = {"sequential": DistributedTokenLoader, "shuffled": ShuffledSequenceLoader}


@dataclass
class ValidationData:
    tokens: torch.Tensor
    # The bytes of every validation target (the BPB denominator): from the tokenizer's byte tables, or
    # from the dataset's byte sidecars when it has them (CaseOps). Every evaluator takes these.
    target_bytes: TargetBytes
    train_files: list[Path]
    val_files: list[Path]

    @property
    def byte_tables(self) -> TargetBytes:
        """The old name of :attr:`target_bytes`, for callers not yet updated (they pass it on to the
        evaluators, which take it under any name)."""
        return self.target_bytes


def validation_target_bytes(sp: spm.SentencePieceProcessor, tokenizer_path: str | os.PathLike, vocab_size: int,
                            tokens: torch.Tensor, val_files: list[Path], bos_id: int) -> TargetBytes:
    """The bytes of every validation target: the byte sidecars when the shards have them, else the
    tokenizer's byte tables. A CaseOps tokenizer without sidecars is refused: its tables would charge
    the operator characters, which are not text."""
    sidecars = find_byte_sidecars(val_files)
    if sidecars is not None:
        return target_bytes_from_sidecars(load_byte_sidecars(sidecars, tokens.numel()), tokens, bos_id,
                                          where=f"the byte sidecars beside {val_files[0]}")
    if is_caseops_tokenizer(sp):
        raise DataError(f"the tokenizer {tokenizer_path} is a CaseOps tokenizer (it has the case operator pieces) but "
                        f"the validation shards in {val_files[0].parent} have no byte sidecars "
                        "(fineweb_val_bytes_*.bin): bits per byte must divide by the original text's bytes, which only "
                        "the sidecars hold. Fetch them (pgolf data fineweb --variant sp8192_caseops) or build the "
                        "dataset with pgolf data build --caseops.")
    return target_bytes_from_tables(build_byte_tables(sp, vocab_size), tokens)


def prepare_validation_data(cfg: Config) -> ValidationData:
    """Shards, tokenizer and the bytes of every target, with every consistency check before any training."""
    train_files = find_shards(cfg.data.data_path, "train")
    val_files = find_shards(cfg.data.data_path, "val")
    assert_disjoint_splits(train_files, val_files)
    sp = load_sentencepiece(cfg.data.tokenizer_path)
    check_tokenizer_vocab(sp, cfg.model.vocab_size, cfg.data.tokenizer_path)
    check_bos_token_id(sp, cfg.model.bos_token_id, cfg.data.tokenizer_path)
    tokens = load_validation_tokens(val_files, cfg.train.train_seq_len, vocab_size=cfg.model.vocab_size)
    check_tokenizer_matches_shards(sp, cfg.data.tokenizer_path, cfg.data.data_path, tokens, cfg.model.bos_token_id)
    if cfg.eval.val_max_tokens > 0:
        keep = max(cfg.eval.val_max_tokens // cfg.train.train_seq_len, 1) * cfg.train.train_seq_len + 1
        tokens = tokens[:keep]
    target_bytes = validation_target_bytes(sp, cfg.data.tokenizer_path, cfg.model.vocab_size, tokens, val_files,
                                           cfg.model.bos_token_id)
    return ValidationData(tokens, target_bytes, train_files, val_files)


def build_train_loader(train_loader: str, vocab_size: int, ctx: DistContext, train_files: list[Path]):
    """The loader TRAIN_LOADER names: the baseline's sequential stream or the record's shuffled sequences."""
    return TRAIN_LOADERS[train_loader](train_files, ctx.rank, ctx.world_size, ctx.device, vocab_size=vocab_size)
