"""Sliding-window evaluation (SPEC 4.12): every target scored exactly once, with the most context.

Windows of ``window`` tokens start every ``stride`` tokens. The first window scores all its positions;
every later window scores only its last ``stride`` positions, so each target is scored once, by the
window that gives it ``window - stride`` tokens of context or more (all of the past, near the start).
Windows are split contiguously over ranks and batched; a short final window is padded with zeros
after its real tokens, which causal attention cannot see. The bytes of the scored targets come from the
validation data's per-target counts (``pgolf.data.val_bytes``), as in the plain evaluation.

With ``stride == window`` this is exactly the plain evaluation of non-overlapping windows.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pgolf.data.tokenizer import ByteTables
from pgolf.data.val_bytes import TargetBytes, resolve_target_bytes
from pgolf.dist import all_reduce_sum_
from pgolf.eval.bpb import EvalSums, rank_sequence_range
from pgolf.log import ProgressBar
from pgolf.runtime import Runtime

# `pgolf export` leaves this module out of train_gpt.py when this is false (docs/export.md).
SLIDING_EXPORT_SWITCH = "sliding_window_enabled or ttt_enabled"


@dataclass(frozen=True)
class ScoringWindow:
    """A window over targets ``[start, start + length)``; it scores positions ``[first_scored, length)``."""

    start: int
    length: int
    first_scored: int

    @property
    def scored_targets(self) -> range:
        """Absolute indices of the targets this window scores (target i predicts token i + 1)."""
        return range(self.start + self.first_scored, self.start + self.length)


def sliding_windows(num_targets: int, window: int, stride: int) -> list[ScoringWindow]:
    """The windows of SPEC 4.12 over ``num_targets`` targets: starts 0, stride, 2*stride, ... while the
    window still has a target to score."""
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    context = window - stride
    windows = [ScoringWindow(0, min(window, num_targets), 0)] if num_targets > 0 else []
    start = stride
    while start + context < num_targets:
        windows.append(ScoringWindow(start, min(window, num_targets - start), context))
        start += stride
    return windows


def window_batch(val_tokens: torch.Tensor, windows: list[ScoringWindow], window: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, targets (B, window) zero-padded, and the boolean mask of the positions to score."""
    x = torch.zeros(len(windows), window, dtype=torch.int64)
    y = torch.zeros_like(x)
    scored = torch.zeros(len(windows), window, dtype=torch.bool)
    for row, w in enumerate(windows):
        span = val_tokens[w.start: w.start + w.length + 1].to(torch.int64)
        x[row, : w.length], y[row, : w.length] = span[:-1], span[1:]
        scored[row, w.first_scored: w.length] = True
    return x.to(device), y.to(device), scored.to(device)


def score_windows(model: torch.nn.Module, val_tokens: torch.Tensor, windows: list[ScoringWindow], *,
                  window: int, target_bytes: TargetBytes, runtime: Runtime) -> torch.Tensor:
    """(loss sum, tokens, bytes) of ``windows`` as a float64 tensor, under no-grad (one batch)."""
    x, y, scored = window_batch(val_tokens, windows, window, runtime.device)
    with torch.no_grad(), runtime.autocast():
        loss = model(x, y, reduction="none").float()
    num_bytes = sum(target_bytes.sum_of(w.scored_targets) for w in windows)
    return torch.stack((loss[scored].double().sum(), scored.sum().double(),
                        torch.tensor(float(num_bytes), dtype=torch.float64, device=loss.device)))


def iter_window_batches(items: list, batch_size: int) -> Iterator[list]:
    for start in range(0, len(items), batch_size):
        yield items[start: start + batch_size]


def evaluate_sliding_bpb(model: torch.nn.Module, val_tokens: torch.Tensor, *, window: int, stride: int,
                         batch_windows: int, target_bytes: ByteTables | TargetBytes, runtime: Runtime,
                         rank: int = 0, world_size: int = 1) -> EvalSums:
    """Sliding-window BPB over all ``val_tokens.numel() - 1`` targets, sums reduced once across ranks."""
    device = runtime.device
    windows = sliding_windows(val_tokens.numel() - 1, window, stride)
    first, last = rank_sequence_range(len(windows), rank, world_size)
    mine = windows[first:last]
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    target_bytes = resolve_target_bytes(target_bytes, val_tokens)
    was_training = model.training
    model.eval()
    bar = ProgressBar("sliding eval", len(mine), enabled=rank == 0)
    for done, batch in enumerate(iter_window_batches(mine, batch_windows)):
        sums += score_windows(model, val_tokens, batch, window=window, target_bytes=target_bytes, runtime=runtime)
        bar.update(done * batch_windows)
    bar.close()
    model.train(was_training)
    all_reduce_sum_(sums)
    loss_sum, token_count, byte_count = sums.tolist()
    return EvalSums(loss_sum=loss_sum, token_count=int(token_count), byte_count=int(byte_count))
