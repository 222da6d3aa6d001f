"""Deterministic training batches and the validation token set (SPEC 2.3, 2.8).

Training reads the sorted train shards front to back and wraps around forever; every rank reads the
same stream and keeps its own disjoint slice, so the batches depend only on the shard files and the
world size (no RNG, no workers). Validation data must never reach this path: the training loader
refuses validation-named files, and :func:`assert_disjoint_splits` compares the two file lists.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from pgolf.data.shards import check_token_ids, read_shard, read_shard_header
from pgolf.errors import ConfigError, DataError

VALIDATION_NAME_MARKER = "fineweb_val_"
# Content fingerprint for the split-disjointness check: size plus a hash of the head and tail.
FINGERPRINT_EDGE_BYTES = 64 * 1024


class TokenStream:
    """An endless stream of tokens over ``files`` in order, wrapping from the last shard to the first.

    Shards are opened one at a time as memory maps; all headers are validated up front so a corrupt
    shard fails at start-up rather than hours into a run.
    """

    def __init__(self, files: list[str | os.PathLike], *, vocab_size: int | None = None):
        if not files:
            raise DataError("TokenStream got an empty list of shard files; check DATA_PATH and the shard glob.")
        self.files = [Path(f) for f in files]
        self.vocab_size = vocab_size
        for path in self.files:
            read_shard_header(path)
        self.shard_index = 0
        self.position = 0
        self.tokens = self._open_shard(0)

    def _open_shard(self, index: int) -> np.ndarray:
        tokens = read_shard(self.files[index])
        if self.vocab_size is not None:
            check_token_ids(tokens, self.vocab_size, self.files[index])
        return tokens

    def _advance_shard(self) -> None:
        self.shard_index = (self.shard_index + 1) % len(self.files)
        self.position = 0
        if len(self.files) > 1:  # with one shard the open memory map is reused
            self.tokens = self._open_shard(self.shard_index)

    def seek(self, shard_index: int, position: int) -> None:
        """Continue from token ``position`` of shard ``shard_index`` (a resumed run)."""
        if not 0 <= shard_index < len(self.files):
            raise DataError(f"a checkpoint asks for shard {shard_index} of {len(self.files)}; the training shards "
                            "changed since it was written. Resume with the DATA_PATH the run started with.")
        self.shard_index = shard_index
        self.tokens = self._open_shard(shard_index)
        if not 0 <= position <= len(self.tokens):
            raise DataError(f"a checkpoint asks for token {position} of {self.files[shard_index]}, which holds "
                            f"{len(self.tokens)}; the shard changed since the checkpoint was written.")
        self.position = position

    def take(self, n: int) -> np.ndarray:
        """Return the next ``n`` tokens as a fresh uint16 array (may span shards and wrap around)."""
        pieces = []
        remaining = n
        while remaining > 0:
            if self.position >= len(self.tokens):
                self._advance_shard()
            count = min(remaining, len(self.tokens) - self.position)
            pieces.append(np.array(self.tokens[self.position : self.position + count]))
            self.position += count
            remaining -= count
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def check_loader_inputs(files: list, rank: int, world_size: int) -> None:
    """What every training loader refuses: validation shards, and a rank outside the world."""
    refuse_validation_files(files)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not valid for world size {world_size}; check RANK and WORLD_SIZE.")


def check_loader_state(state: dict, kind: str, files: list[Path]) -> None:
    """DataError unless a saved loader state is of ``kind`` and was taken over the same shard names."""
    if state.get("kind") != kind:
        raise DataError(f"the checkpoint holds a {state.get('kind')!r} loader position but this run uses "
                        f"TRAIN_LOADER={kind}; resume with the configuration the run started with.")
    names = [path.name for path in files]
    if state.get("files") != names:
        raise DataError(f"the checkpoint's loader read the shards {state.get('files')} but this run has {names}; "
                        "the training data changed. Resume with the DATA_PATH the run started with.")


class DistributedTokenLoader:
    """Training batches for one rank: the same stream on every rank, each keeping a disjoint slice."""

    def __init__(
        self,
        files: list[str | os.PathLike],
        rank: int,
        world_size: int,
        device: str | torch.device,
        *,
        vocab_size: int | None = None,
    ):
        check_loader_inputs(files, rank, world_size)
        self.files = [Path(f) for f in files]
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.vocab_size = vocab_size
        self.stream = TokenStream(self.files, vocab_size=vocab_size)

    def reset(self) -> None:
        """Restart from token 0 of shard 0 (after compile priming, so the timed run sees the same data)."""
        self.stream = TokenStream(self.files, vocab_size=self.vocab_size)

    def position_state(self) -> dict:
        """Where the stream stands, as plain JSON values (checkpoints store it; :meth:`restore_position`)."""
        return {"kind": "sequential", "files": [path.name for path in self.files],
                "shard_index": self.stream.shard_index, "position": self.stream.position}

    def restore_position(self, state: dict) -> None:
        """Continue exactly where :meth:`position_state` was taken, over the same shard files."""
        check_loader_state(state, "sequential", self.files)
        self.stream.seek(int(state["shard_index"]), int(state["position"]))

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` int64 tensors of shape ``(local // seq_len, seq_len)`` on this rank's device.

        ``local = global_tokens // (world_size * grad_accum_steps)``. Every rank takes the same
        ``(local + 1) * world_size`` tokens; rank r keeps ``[r*(local+1), (r+1)*(local+1))``, whose
        last token is used only as a target.
        """
        local = local_batch_tokens(global_tokens, seq_len, self.world_size, grad_accum_steps)
        span = local + 1
        chunk = self.stream.take(span * self.world_size)
        mine = torch.from_numpy(chunk[self.rank * span : (self.rank + 1) * span].astype(np.int64))
        x = mine[:-1].reshape(-1, seq_len)
        y = mine[1:].reshape(-1, seq_len)
        non_blocking = self.device.type == "cuda"
        return x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)


def local_batch_tokens(global_tokens: int, seq_len: int, world_size: int, grad_accum_steps: int) -> int:
    """Tokens per rank per micro-step; ConfigError unless it is a positive multiple of ``seq_len``."""
    local = global_tokens // (world_size * grad_accum_steps)
    if local <= 0 or local % seq_len != 0:
        raise ConfigError(
            f"TRAIN_BATCH_TOKENS={global_tokens} split over world size {world_size} x {grad_accum_steps} "
            f"grad-accumulation steps gives {local} tokens per micro-batch, which is not a positive multiple of "
            f"TRAIN_SEQ_LEN={seq_len}. Choose TRAIN_BATCH_TOKENS as a multiple of "
            f"{world_size * grad_accum_steps * seq_len} (world size x grad accum x TRAIN_SEQ_LEN)."
        )
    return local


def refuse_validation_files(files: list[str | os.PathLike]) -> None:
    """DataError if any file is named like a validation shard: validation data never reaches training."""
    for path in files:
        if VALIDATION_NAME_MARKER in Path(path).name:
            raise DataError(
                f"{path} is a validation shard and was given to the training loader; validation data never "
                "reaches training. Pass only fineweb_train_*.bin files (check DATA_PATH and the train glob)."
            )


def _file_fingerprint(path: Path) -> tuple[int, str]:
    """Size plus sha256 of the first and last 64 KiB: equal for identical files, cheap on 200 MB shards."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_EDGE_BYTES))
        if size > FINGERPRINT_EDGE_BYTES:
            handle.seek(max(FINGERPRINT_EDGE_BYTES, size - FINGERPRINT_EDGE_BYTES))
            digest.update(handle.read())
    return size, digest.hexdigest()


def assert_disjoint_splits(train_files: list[str | os.PathLike], val_files: list[str | os.PathLike]) -> None:
    """DataError if a validation file is also a training file, by resolved path or by content."""
    train_paths = {Path(f).resolve(): Path(f) for f in train_files}
    for val_file in val_files:
        if Path(val_file).resolve() in train_paths:
            raise DataError(
                f"{val_file} is both a training and a validation file; validation data never reaches training. "
                "Fix DATA_PATH or the shard lists so the splits are separate."
            )
    train_by_fingerprint = {_file_fingerprint(p): p for p in train_paths}
    for val_file in val_files:
        twin = train_by_fingerprint.get(_file_fingerprint(Path(val_file).resolve()))
        if twin is not None:
            raise DataError(
                f"validation file {val_file} has the same content as training file {twin}; validation data never "
                "reaches training. Remove the copy from the training shards."
            )


def load_validation_tokens(
    files: list[str | os.PathLike], seq_len: int, *, vocab_size: int | None = None
) -> torch.Tensor:
    """All validation shards concatenated, cut to ``((N - 1) // seq_len) * seq_len + 1`` int64 tokens.

    The extra final token is the target of the last scored position.
    """
    if not files:
        raise DataError("no validation shard files were given; check DATA_PATH (expects fineweb_val_*.bin).")
    pieces = []
    for path in files:
        tokens = read_shard(path)
        if vocab_size is not None:
            check_token_ids(tokens, vocab_size, path)
        pieces.append(tokens)
    total = sum(len(p) for p in pieces)
    if total < seq_len + 1:
        raise DataError(
            f"the validation shards hold {total} tokens, fewer than one sequence of {seq_len} plus one target "
            f"({seq_len + 1}). Make EVAL_SEQ_LEN/TRAIN_SEQ_LEN smaller or add more validation data."
        )
    usable = ((total - 1) // seq_len) * seq_len + 1
    joined = np.concatenate(pieces)[:usable]
    return torch.from_numpy(joined.astype(np.int64))
