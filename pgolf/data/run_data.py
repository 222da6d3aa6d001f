"""What a training run reads: the validation split (checked before any training) and its training loader.

Validation tokens and training batches come from different files by construction: the splits are
checked disjoint here, and every training loader refuses validation shards itself.

Everything that could make the score wrong is refused here, before a step is trained: a tokenizer
that did not make the shards (:mod:`pgolf.data.tokenizer_match`), a ``BOS_TOKEN_ID`` that is not the
tokenizer's, validation ids beyond the vocabulary, and CaseOps data scored without its byte sidecars
(:mod:`pgolf.data.val_bytes`: with ``BYTE_SIDECARS=auto`` sidecars are found and used automatically,
and required when the tokenizer has the CaseOps operator pieces; ``on`` requires them, ``off`` refuses
them and CaseOps tokenizers).
"""

from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch

from pgolf.config import Config, DataConfig, evaluation_window
from pgolf.data.byte_sidecars import find_byte_sidecars, load_byte_sidecars, target_bytes_from_sidecars
from pgolf.data.caseops import is_caseops_tokenizer
from pgolf.data.loader import DistributedTokenLoader, assert_disjoint_splits, load_validation_tokens
from pgolf.data.shards import find_shards, list_split_shards, read_shard_header
from pgolf.data.shuffled import ShuffledSequenceLoader
from pgolf.data.tokenizer import build_byte_tables, check_tokenizer_vocab, load_sentencepiece
from pgolf.data.tokenizer_match import check_bos_token_id, check_tokenizer_matches_shards
from pgolf.data.val_bytes import TargetBytes, list_byte_sidecars, target_bytes_from_tables
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


def validation_target_bytes(sp: spm.SentencePieceProcessor, data_cfg: DataConfig, vocab_size: int,
                            tokens: torch.Tensor, val_files: list[Path], bos_id: int) -> TargetBytes:
    """The bytes of every validation target, from where BYTE_SIDECARS says: the byte sidecars when the
    shards have them (``auto``) or always (``on``), else the tokenizer's byte tables. Data the tables
    would count wrongly (sidecars present, or a CaseOps tokenizer) is refused with ``off``."""
    # A plain test of the setting: an export with BYTE_SIDECARS=off folds it and ships no sidecar reader
    # (pgolf.data.byte_sidecars), only the cheap refusal.
    if data_cfg.byte_sidecars == "off":
        refuse_byte_sidecars(val_files)
    else:
        sidecars = find_byte_sidecars(val_files)
        if sidecars is not None:
            return target_bytes_from_sidecars(load_byte_sidecars(sidecars, tokens.numel()), tokens, bos_id,
                                              where=f"the byte sidecars beside {val_files[0]}")
        if data_cfg.byte_sidecars == "on":
            raise DataError(f"BYTE_SIDECARS=on but the validation shards in {val_files[0].parent} have no byte "
                            "sidecars (fineweb_val_bytes_*.bin). Fetch the CaseOps data with them (pgolf data fineweb "
                            "--variant sp8192_caseops) or build it with pgolf data build --caseops; for data that is "
                            "not CaseOps set BYTE_SIDECARS=off.")
    refuse_caseops_tokenizer(sp, data_cfg, val_files)
    return target_bytes_from_tables(build_byte_tables(sp, vocab_size), tokens)


def refuse_byte_sidecars(val_files: list[Path]) -> None:
    """With BYTE_SIDECARS=off, a DataError when the validation folder has byte sidecars: such shards
    spell a transformed text (CaseOps), and the byte tables would count its bytes, not the text's.
    Only a glob, so the run needs no sidecar reader to refuse them."""
    for folder in sorted({f.parent for f in val_files}):
        found = list_byte_sidecars(folder)
        if found:
            raise DataError(f"BYTE_SIDECARS=off but the validation shards in {folder} have byte sidecars "
                            f"({found[0].name}, {len(found)} in all): this is CaseOps data, whose bits per byte "
                            "must divide by the sidecars' bytes, not the tokenizer's byte tables. The presets for data "
                            "without sidecars (tiny_cpu, baseline_sp1024, record_sp8192, ...) set BYTE_SIDECARS=off; "
                            "for this dataset set BYTE_SIDECARS=on (pgolf train ... BYTE_SIDECARS=on, or the "
                            "environment variable; a train_gpt.py from pgolf export: export it again with "
                            "BYTE_SIDECARS=on).")


def refuse_caseops_tokenizer(sp: spm.SentencePieceProcessor, data_cfg: DataConfig, val_files: list[Path]) -> None:
    """A DataError when scoring with byte tables would use a CaseOps tokenizer: its tables charge 3
    bytes for every case operator, which is not text (a BPB about 9% too good on the record's data)."""
    if not is_caseops_tokenizer(sp):
        return
    if data_cfg.byte_sidecars == "off":
        raise DataError(f"BYTE_SIDECARS=off but the tokenizer {data_cfg.tokenizer_path} is a CaseOps tokenizer (it "
                        "has the case operator pieces): bits per byte must divide by the original text's bytes, "
                        "which only byte sidecars hold. Set BYTE_SIDECARS=on and use CaseOps data with its sidecars "
                        "(pgolf data fineweb --variant sp8192_caseops, or pgolf data build --caseops).")
    raise DataError(f"the tokenizer {data_cfg.tokenizer_path} is a CaseOps tokenizer (it has the case operator pieces) "
                    f"but the validation shards in {val_files[0].parent} have no byte sidecars "
                    "(fineweb_val_bytes_*.bin): bits per byte must divide by the original text's bytes, which only "
                    "the sidecars hold. Fetch them (pgolf data fineweb --variant sp8192_caseops) or build the "
                    "dataset with pgolf data build --caseops.")


def find_training_shards(data_path: str, training: bool) -> list[Path]:
    """The training shards, each header checked (an empty or truncated shard is refused before any work),
    when ``training``; otherwise (evaluation) whatever training shards are there, none required."""
    if not training:
        return list_split_shards(data_path, "train") if Path(data_path).is_dir() else []
    train_files = find_shards(data_path, "train")
    for path in train_files:
        read_shard_header(path)  # a few bytes each
    return train_files


def prepare_validation_data(cfg: Config, *, training: bool = True) -> ValidationData:
    """Shards, tokenizer and the bytes of every target, with every consistency check before any training.

    ``training=False`` (``pgolf eval``): only the validation shards are required; training shards that are
    there are still checked disjoint from them."""
    val_files = find_shards(cfg.data.data_path, "val")
    train_files = find_training_shards(cfg.data.data_path, training)
    assert_disjoint_splits(train_files, val_files)
    sp = load_sentencepiece(cfg.data.tokenizer_path)
    check_tokenizer_vocab(sp, cfg.model.vocab_size, cfg.data.tokenizer_path)
    check_bos_token_id(sp, cfg.model.bos_token_id, cfg.data.tokenizer_path)
    window = evaluation_window(cfg)  # the plain evaluation's windows: whole ones only
    tokens = load_validation_tokens(val_files, window, vocab_size=cfg.model.vocab_size)
    check_tokenizer_matches_shards(sp, cfg.data.tokenizer_path, cfg.data.data_path, tokens, cfg.model.bos_token_id)
    if cfg.eval.val_max_tokens > 0:
        keep = max(cfg.eval.val_max_tokens // window, 1) * window + 1  # whole windows (the config refuses < 1)
        tokens = tokens[:keep]
    target_bytes = validation_target_bytes(sp, cfg.data, cfg.model.vocab_size, tokens, val_files,
                                           cfg.model.bos_token_id)
    return ValidationData(tokens, target_bytes, train_files, val_files)


def build_train_loader(train_loader: str, vocab_size: int, ctx: DistContext, train_files: list[Path]):
    """The loader TRAIN_LOADER names: the baseline's sequential stream or the record's shuffled sequences."""
    return TRAIN_LOADERS[train_loader](train_files, ctx.rank, ctx.world_size, ctx.device, vocab_size=vocab_size)
