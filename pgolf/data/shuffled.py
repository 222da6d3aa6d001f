"""Shuffled-sequence training batches: the record's ``ShuffledSequenceLoader`` (SPEC 4.3).

Instead of one stream read front to back, every rank samples whole training sequences at random
positions from its own shards:

* rank r owns the sorted shards ``files[r::world_size]``, so ranks never share data;
* the RNG is NumPy's PCG64 seeded with the rank (independent of SEED, as in the record);
* per shard, a random phase in ``[0, min(seq_len - 1, n - seq_len - 1)]`` and the start offsets
  ``phase + k * seq_len`` (each followed by ``seq_len + 1`` tokens) in a random order;
* every row of a batch picks a shard with probability proportional to its remaining offsets and pops
  one offset; once every offset of every shard is used (an epoch), all shards are reshuffled.

Each offset is therefore used exactly once per epoch. Sequences cross document boundaries, as in the
sequential loader. Validation shards are refused.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf.data.loader import check_loader_inputs, check_loader_state, local_batch_tokens
from pgolf.data.shards import check_token_ids, read_shard
from pgolf.errors import DataError


@dataclass
class ShardOffsets:
    """One shard's memory-mapped tokens and the start offsets not yet used in this epoch."""

    path: Path
    tokens: np.ndarray
    offsets: np.ndarray  # start offsets in the order they will be used
    used: int = 0

    @property
    def remaining(self) -> int:
        return len(self.offsets) - self.used


def shard_start_offsets(num_tokens: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Random-phase, randomly ordered starts of whole ``seq_len + 1``-token windows in one shard.

    Empty when the shard is shorter than one window.
    """
    max_phase = min(seq_len - 1, num_tokens - seq_len - 1)
    if max_phase < 0:
        return np.zeros(0, dtype=np.int64)
    phase = int(rng.integers(0, max_phase + 1))
    count = (num_tokens - 1 - phase) // seq_len
    return rng.permutation(phase + seq_len * np.arange(count, dtype=np.int64))


class ShuffledSequenceLoader:
    """Training batches for one rank, sampled as whole sequences from the rank's own shards.

    Same interface as ``DistributedTokenLoader``: ``next_batch(global_tokens, seq_len, accum)`` returns
    int64 ``(x, y)`` of shape ``(local // seq_len, seq_len)`` on ``device``, and ``reset()`` starts over
    exactly (same RNG seed, same draws).
    """

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
        self.files = sorted(Path(f) for f in files)[rank::world_size]
        if not self.files:
            raise DataError(
                f"the shuffled loader gives each rank its own shards, but there are {len(files)} training shards "
                f"for world size {world_size}, so rank {rank} has none. Use at least {world_size} train shards "
                "or TRAIN_LOADER=sequential."
            )
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.shard_tokens = [self._open(path, vocab_size) for path in self.files]
        self.reset()

    @staticmethod
    def _open(path: Path, vocab_size: int | None) -> np.ndarray:
        tokens = read_shard(path)
        if vocab_size is not None:
            check_token_ids(tokens, vocab_size, path)
        return tokens

    def reset(self) -> None:
        """Start over from the first draw: a fresh RNG seeded with the rank, shards reshuffled."""
        self.rng = np.random.Generator(np.random.PCG64(self.rank))
        self.seq_len: int | None = None
        self.shards: list[ShardOffsets] = []
        self.epoch = 0
        self._epoch_rng_state: dict | None = None

    def position_state(self) -> dict:
        """The sampler's position as JSON values: the RNG state now and at the start of the epoch, plus
        how many offsets of each shard were used (the epoch's offsets are re-drawn from its RNG state)."""
        return {"kind": "shuffled", "files": [path.name for path in self.files], "seq_len": self.seq_len,
                "epoch": self.epoch, "epoch_rng_state": self._epoch_rng_state,
                "rng_state": self.rng.bit_generator.state, "used": [shard.used for shard in self.shards]}

    def restore_position(self, state: dict) -> None:
        """Continue exactly where :meth:`position_state` was taken, over the same shard files."""
        check_loader_state(state, "shuffled", self.files)
        self.reset()
        if state["seq_len"] is not None:
            # Re-draw the epoch's phases and orders from the RNG state they were drawn from.
            self.rng.bit_generator.state = state["epoch_rng_state"]
            self.seq_len, self.epoch = int(state["seq_len"]), int(state["epoch"]) - 1
            self._reshuffle(self.seq_len)
            for shard, used in zip(self.shards, state["used"], strict=True):
                shard.used = int(used)
        self.rng.bit_generator.state = state["rng_state"]

    def _reshuffle(self, seq_len: int) -> None:
        """New phase and order for every shard: the start of an epoch."""
        self._epoch_rng_state = self.rng.bit_generator.state
        self.shards = [ShardOffsets(path, tokens, shard_start_offsets(len(tokens), seq_len, self.rng))
                       for path, tokens in zip(self.files, self.shard_tokens)]
        if not any(shard.remaining for shard in self.shards):
            raise DataError(
                f"none of this rank's {len(self.files)} training shards holds one sequence of TRAIN_SEQ_LEN={seq_len} "
                "plus a target token; use a shorter TRAIN_SEQ_LEN or larger shards."
            )
        self.epoch += 1

    def _draw_window(self, seq_len: int) -> np.ndarray:
        """One ``seq_len + 1``-token window from a shard chosen in proportion to its remaining offsets."""
        remaining = np.array([shard.remaining for shard in self.shards], dtype=np.float64)
        if remaining.sum() == 0:
            self._reshuffle(seq_len)
            remaining = np.array([shard.remaining for shard in self.shards], dtype=np.float64)
        shard = self.shards[int(self.rng.choice(len(self.shards), p=remaining / remaining.sum()))]
        start = int(shard.offsets[shard.used])
        shard.used += 1
        return shard.tokens[start : start + seq_len + 1]

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``local // seq_len`` sampled sequences; ``y`` is ``x`` shifted by one token."""
        local = local_batch_tokens(global_tokens, seq_len, self.world_size, grad_accum_steps)
        if seq_len != self.seq_len:
            # Offsets are laid out for one sequence length; a new length starts a new epoch.
            self.seq_len = seq_len
            self._reshuffle(seq_len)
        windows = np.stack([self._draw_window(seq_len) for _ in range(local // seq_len)]).astype(np.int64)
        rows = torch.from_numpy(windows)
        non_blocking = self.device.type == "cuda"
        x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        return x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)
