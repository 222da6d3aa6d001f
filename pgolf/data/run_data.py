"""What a training run reads: the validation split (checked before any training) and its training loader.

Validation tokens and training batches come from different files by construction: the splits are
checked disjoint here, and every training loader refuses validation shards itself.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from pgolf.config import Config
from pgolf.data.loader import DistributedTokenLoader, assert_disjoint_splits, load_validation_tokens
from pgolf.data.shards import find_shards
from pgolf.data.shuffled import ShuffledSequenceLoader
from pgolf.data.tokenizer import ByteTables, build_byte_tables, check_tokenizer_vocab, load_sentencepiece
from pgolf.dist import DistContext

# TRAIN_LOADER -> training loader class (same constructor and interface).
TRAIN_LOADERS = {"sequential": DistributedTokenLoader, "shuffled": ShuffledSequenceLoader}


@dataclass
class ValidationData:
    tokens: torch.Tensor
    byte_tables: ByteTables
    train_files: list[Path]
    val_files: list[Path]


def prepare_validation_data(cfg: Config) -> ValidationData:
    """Shards, tokenizer and byte tables, with every consistency check before any training starts."""
    train_files = find_shards(cfg.data.data_path, "train")
    val_files = find_shards(cfg.data.data_path, "val")
    assert_disjoint_splits(train_files, val_files)
    sp = load_sentencepiece(cfg.data.tokenizer_path)
    check_tokenizer_vocab(sp, cfg.model.vocab_size, cfg.data.tokenizer_path)
    tokens = load_validation_tokens(val_files, cfg.train.train_seq_len)
    if cfg.eval.val_max_tokens > 0:
        keep = max(cfg.eval.val_max_tokens // cfg.train.train_seq_len, 1) * cfg.train.train_seq_len + 1
        tokens = tokens[:keep]
    return ValidationData(tokens, build_byte_tables(sp, cfg.model.vocab_size), train_files, val_files)


def build_train_loader(train_loader: str, vocab_size: int, ctx: DistContext, train_files: list[Path]):
    """The loader TRAIN_LOADER names: the baseline's sequential stream or the record's shuffled sequences."""
    return TRAIN_LOADERS[train_loader](train_files, ctx.rank, ctx.world_size, ctx.device, vocab_size=vocab_size)
