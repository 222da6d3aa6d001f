"""Validation loss and bits per byte (SPEC 2.8): sums per rank, reduced once, divided at the end.

``val_bpb = (loss_sum / ln 2) / byte_sum``, where ``byte_sum`` counts, for every scored target token,
the UTF-8 bytes it contributes to the text: from the tokenizer's byte tables, or from the dataset's byte
sidecars when it has them (CaseOps). ``pgolf.data.val_bytes.TargetBytes`` is the one place that decides.
"""

import math
from dataclasses import dataclass

import torch

from pgolf.data.tokenizer import ByteTables
from pgolf.data.val_bytes import TargetBytes, resolve_target_bytes
from pgolf.dist import all_reduce_sum_
from pgolf.log import ProgressBar
from pgolf.runtime import Runtime


@dataclass(frozen=True)
class EvalSums:
    """Global sums over every scored token (already reduced across ranks)."""

    loss_sum: float  # nats
    token_count: int
    byte_count: int

    @property
    def val_loss(self) -> float:
        return self.loss_sum / self.token_count

    @property
    def val_bpb(self) -> float:
        return self.loss_sum / math.log(2.0) / self.byte_count

    def as_dict(self) -> dict:
        return {"val_loss": self.val_loss, "val_bpb": self.val_bpb, "loss_sum": self.loss_sum,
                "token_count": self.token_count, "byte_count": self.byte_count}


def rank_sequence_range(num_sequences: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous block of sequence indices owned by ``rank`` (SPEC 2.8)."""
    return num_sequences * rank // world_size, num_sequences * (rank + 1) // world_size


def evaluate_bpb(model: torch.nn.Module, val_tokens: torch.Tensor, *, seq_len: int, batch_sequences: int,
                 target_bytes: ByteTables | TargetBytes, runtime: Runtime, rank: int = 0,
                 world_size: int = 1) -> EvalSums:
    """Score every validation target once with non-overlapping windows of ``seq_len``.

    ``val_tokens`` holds ``k * seq_len + 1`` tokens (see ``load_validation_tokens``); each rank scores its
    contiguous share of the ``k`` windows in batches of ``batch_sequences``, on ``runtime``'s device and
    in its precision. ``target_bytes``: the validation data's per-target bytes, or byte tables to count
    them from ``val_tokens``.
    """
    device = runtime.device
    num_sequences = (val_tokens.numel() - 1) // seq_len
    first, last = rank_sequence_range(num_sequences, rank, world_size)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, tokens, bytes
    target_bytes = resolve_target_bytes(target_bytes, val_tokens)
    was_training = model.training
    model.eval()
    bar = ProgressBar("eval", last - first, enabled=rank == 0)
    with torch.no_grad():
        for start in range(first, last, batch_sequences):
            bar.update(start - first)
            stop = min(start + batch_sequences, last)
            window = val_tokens[start * seq_len: stop * seq_len + 1].to(device=device, dtype=torch.int64)
            x, y = window[:-1].view(-1, seq_len), window[1:].view(-1, seq_len)
            with runtime.autocast():
                loss_sum = model(x, y, reduction="sum")
            sums[0] += loss_sum.double()
            sums[1] += y.numel()
            sums[2] += target_bytes.sum_of(range(start * seq_len, stop * seq_len))
    bar.close()
    model.train(was_training)
    all_reduce_sum_(sums)
    loss_sum, token_count, byte_count = sums.tolist()
    return EvalSums(loss_sum=loss_sum, token_count=int(token_count), byte_count=int(byte_count))


def uniform_guess_bpb(vocab_size: int, sums: EvalSums) -> float:
    """The bits per byte of guessing uniformly over the vocabulary: a floor any model must beat."""
    return math.log2(vocab_size) * sums.token_count / sums.byte_count
